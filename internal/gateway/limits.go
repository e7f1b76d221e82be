package gateway

// An access key's policy on the request path: its expiry, the models it may use and its
// limits (tenant.Limiter), each refusal in Google's own error format so that SDKs react as
// they do to Google's.

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// Values of the request log's limit_hit: why the access key's policy refused a request.
const (
	hitModels = "models"
	// hitShared: the limits shared with the other instances could not be checked (the
	// store's ledger did not answer), so the request was refused rather than risk one too
	// many.
	hitShared = "shared_limits"
)

// expired tells whether the access key's policy has expired at now.
func (k *accessKey) expired(now time.Time) bool {
	return k.policy != nil && !k.policy.ExpiresAt.IsZero() && !now.Before(k.policy.ExpiresAt)
}

// allowModel refuses a request for a model outside the access key's models, as Google refuses
// a model a project may not use: 403 PERMISSION_DENIED naming it.
func (x *exchange) allowModel() bool {
	p := x.key.policy
	if len(p.Models) == 0 {
		return true
	}
	model := x.model
	if model == "" {
		// A request whose path names no model may name one in its body (cachedContents.create):
		// a cache for a model the key may not use costs tokens too.
		model = bodyModel(x.body)
	}
	if p.AllowsModel(model) {
		return true
	}
	x.limitHit = hitModels
	x.fail(http.StatusForbidden, "PERMISSION_DENIED", modelRefusal(model))
	return false
}

// modelRefusal is the message refusing a model outside the access key's models.
func modelRefusal(model string) string {
	return "This access key may not use the model " + strconv.Quote(strings.TrimPrefix(model, "models/")) +
		": it is outside the models its policy allows."
}

// bodyModel is the top-level "model" member of a JSON request body (exactly that name), or "".
func bodyModel(body []byte) string {
	if len(body) == 0 || !bytes.Contains(body, []byte(`"model"`)) {
		return ""
	}
	var b map[string]bodyMember
	if json.Unmarshal(body, &b) != nil {
		return ""
	}
	var model string
	_ = json.Unmarshal([]byte(b["model"]), &model)
	return model
}

// listsModels tells whether the request lists models (native or OpenAI-compatible) for an
// access key whose policy allows only some: the answer is then filtered.
func (x *exchange) listsModels() bool {
	if x.r.Method != http.MethodGet || x.key == nil || len(x.key.policy.Models) == 0 {
		return false
	}
	s := exactName(x.path)
	return s == "models" || s == "openai/models"
}

// filterModels keeps, in a models listing, the models the access key may use.
func (x *exchange) filterModels(b []byte) ([]byte, error) {
	member := "models"
	if x.openAI {
		member = "data"
	}
	return filterList(b, member, func(items []listItem) ([]bool, error) {
		keep := make([]bool, len(items))
		for i, it := range items {
			name := it.Name
			if name == "" {
				name = it.ID
			}
			keep[i] = name != "" && x.key.policy.AllowsModel(name)
		}
		return keep, nil
	})
}

// admit counts the request against the access key's limits, or refuses it with 429
// RESOURCE_EXHAUSTED when one is reached: nothing goes upstream, no pool key is touched.
func (x *exchange) admit() bool {
	t, refusal := x.core.limiter.Admit(x.access, x.start)
	if refusal == nil {
		x.ticket = t
		return true
	}
	if refusal.Unavailable {
		msg := x.limitRefusal(refusal)
		x.retryAfter(refusal.RetryAt, time.Now())
		x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", msg)
		return false
	}
	x.refuseLimits(refusal)
	return false
}

// shareLimits puts the limiter in cluster mode when the store is shared by several instances
// (store.Leaser): every access key's limits then hold for all of them, each instance leasing
// slices of them (tenant/cluster.go). A background loop settles with the store every
// fraction of a second and gives everything back when the core is destroyed.
func (c *Core) shareLimits(lease time.Duration, slice float64) {
	lz, ok := c.store.(store.Leaser)
	if !ok {
		return
	}
	c.limiter.SetCluster(tenant.Cluster{Ledger: lz, Lifetime: lease, Share: slice, Warn: func(msg string, err error) {
		c.logger.Warn(msg, zap.Error(err))
	}})
	every := c.limiter.SyncEvery()
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-c.ctx.Done():
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if err := c.limiter.Release(ctx); err != nil {
					c.logger.Warn("giving back the unused slices of the shared limits failed; they return to the other instances within a minute", zap.Error(err))
				}
				cancel()
				return
			case <-tick.C:
				ctx, cancel := context.WithTimeout(c.ctx, tenant.DefaultLedgerTimeout)
				_ = c.limiter.Sync(ctx) // a failure is logged by the limiter, and retried
				cancel()
			}
		}
	}()
}

// quotaNames are how each limit is named in a QuotaFailure violation: a quotaId in Google's
// style and words for the message.
var quotaNames = map[string]struct{ id, words string }{
	tenant.LimitRPM:         {"RequestsPerMinutePerAccessKey", "requests per minute"},
	tenant.LimitRPD:         {"RequestsPerDayPerAccessKey", "requests per day"},
	tenant.LimitTPM:         {"TokensPerMinutePerAccessKey", "tokens per minute"},
	tenant.LimitBudget:      {"TokenBudgetPerAccessKey", "tokens in the budget's period"},
	tenant.LimitConcurrency: {"ConcurrentRequestsPerAccessKey", "requests in flight at once"},
}

// refuseLimits answers a request over its access key's limits as Google answers one over a
// quota: 429 RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure naming each limit reached and a
// google.rpc.RetryInfo (and Retry-After) saying when a request will pass.
func (x *exchange) refuseLimits(r *tenant.Refusal) {
	msg := x.limitRefusal(r)
	secs := retrySeconds(r.RetryAt, x.start)
	type violation struct {
		Subject     string `json:"subject"`
		Description string `json:"description"`
		QuotaMetric string `json:"quotaMetric"`
		QuotaID     string `json:"quotaId"`
		QuotaValue  string `json:"quotaValue"`
	}
	vs := make([]violation, 0, len(r.Violations))
	for _, v := range r.Violations {
		n := quotaNames[v.Limit]
		vs = append(vs, violation{
			Subject:     "access_key:" + strconv.FormatInt(x.access, 10),
			Description: "Limit " + v.Limit + " of this access key: " + strconv.FormatInt(v.Value, 10) + " " + n.words + ".",
			QuotaMetric: "gemini-synapse/access_key/" + v.Limit,
			QuotaID:     n.id,
			QuotaValue:  strconv.FormatInt(v.Value, 10),
		})
	}
	body := map[string]any{"error": map[string]any{
		"code": http.StatusTooManyRequests, "message": msg, "status": "RESOURCE_EXHAUSTED",
		"details": []any{
			map[string]any{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": vs},
			map[string]any{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": strconv.FormatInt(secs, 10) + "s"},
		},
	}}
	b, _ := json.Marshal(body)
	b = append(b, '\n')
	hdr := x.w.Header()
	hdr.Set("Retry-After", strconv.FormatInt(secs, 10))
	hdr.Set("Content-Type", "application/json; charset=UTF-8")
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	x.status = http.StatusTooManyRequests
	x.errText = msg
	x.w.WriteHeader(http.StatusTooManyRequests)
	x.w.Write(b)
}

// limitRefusal notes the first limit a refusal names as the request's limit_hit and returns
// the message that tells the client which limits it reached and when to retry; a refusal for
// want of the shared limits' ledger (Unavailable) is noted as hitShared and says so.
func (x *exchange) limitRefusal(r *tenant.Refusal) string {
	if r.Unavailable {
		x.limitHit = hitShared
		return "The limits of this access key are shared with the other instances of the gateway, and they cannot be checked right now. Retry in " +
			strconv.FormatInt(retrySeconds(r.RetryAt, x.start), 10) + "s."
	}
	var words []string
	for _, v := range r.Violations {
		words = append(words, strconv.FormatInt(v.Value, 10)+" "+quotaNames[v.Limit].words+" ("+v.Limit+")")
	}
	if len(r.Violations) > 0 {
		x.limitHit = r.Violations[0].Limit
	}
	return "This access key has reached its limit of " + strings.Join(words, " and ") +
		". Retry in " + strconv.FormatInt(retrySeconds(r.RetryAt, x.start), 10) + "s."
}

// retrySeconds is the whole seconds from now to at, at least 1.
func retrySeconds(at, now time.Time) int64 {
	return max(int64((at.Sub(now)+time.Second-1)/time.Second), 1)
}

// chargedTokens are the tokens the answer costs its access key: prompt + candidates + thoughts
// from its usageMetadata (the OpenAI-compatible usage: its total, whose completion tokens
// include the reasoning ones).
func (x *exchange) chargedTokens() int64 {
	u := x.usage
	if x.openAI {
		return u.total
	}
	return u.prompt + u.candidates + u.thoughts
}
