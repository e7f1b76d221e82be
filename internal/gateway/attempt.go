package gateway

import (
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// proxy runs the attempt loop: pick a key, send, classify, and either answer the client or
// retry on another key while nothing has been written yet. Quota and key errors are retried up
// to max_retries times; a 5xx or network failure at most once (it is about the model or the
// service, not the key), and not at all while the model is in an outage.
func (x *exchange) proxy() {
	c := x.core
	if ok, retryAt := c.pool.Admit(x.model, time.Now()); !ok {
		c.metrics.refused.Inc()
		x.outage(retryAt)
		return
	}
	var skipBuf [8]int64
	skip := skipBuf[:0]
	var last *upstreamError // the newest failed answer, returned if no retry is left
	transientRetried := false
	for {
		now := time.Now()
		id, secret, err := c.pool.Next(x.model, now, skip)
		if err != nil {
			if last != nil {
				x.writeUpstreamError(last)
				return
			}
			var ce *keypool.CoolingError
			if errors.As(err, &ce) {
				x.retryAfter(ce.Until, now)
				x.fail(http.StatusTooManyRequests, "RESOURCE_EXHAUSTED",
					"Every upstream key is cooling down for model "+ce.Model+" (quota exhausted, or kept out after failures); retry after "+ce.Until.UTC().Format(time.RFC3339)+".")
				return
			}
			x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", "No upstream key is available: add or enable keys in the admin panel.")
			return
		}
		x.attempts++
		x.keyID = id
		resp, fail, retryable := x.attempt(id, secret)
		if resp != nil {
			x.answer(resp, secret) // resources.go: records what the answer creates
			return
		}
		if fail == nil {
			return // the client is gone
		}
		last = fail
		if fail.outcome.Kind == keypool.Transient {
			if transientRetried || fail.outage {
				retryable = false
			}
			transientRetried = true
		}
		if retryable && x.attempts <= x.set.maxRetries {
			skip = append(skip, id)
			continue
		}
		x.writeUpstreamError(last)
		return
	}
}

// outage answers a request the model's open circuit holds back: Google's own status for an
// overloaded model, and when the next trial request may pass.
func (x *exchange) outage(retryAt time.Time) {
	now := time.Now()
	x.retryAfter(retryAt, now)
	what := "model " + x.model
	if x.model == "" {
		what = "this kind of call"
	}
	x.fail(http.StatusServiceUnavailable, "UNAVAILABLE",
		"The upstream is failing for "+what+" with every key (an outage or overload at Google); the gateway holds requests back and lets a trial through every second. Please retry later.")
}

// upstreamError is a failed upstream answer, kept to be returned when no retry is left.
type upstreamError struct {
	status  int
	header  http.Header
	body    []byte
	reason  string // network failures have no body; never shown to the client (see unreachable)
	outcome keypool.Outcome
	outage  bool // the model is in an outage: no other key will do better
	logged  bool // the error log has the failure already
}

// attempt sends the client's request once with key id. It returns the answer when the
// upstream took the request; else the failure to answer with, and whether another key may
// succeed where this one failed. Both are nil when the client is gone.
func (x *exchange) attempt(id int64, secret string) (resp *http.Response, fail *upstreamError, retryable bool) {
	req, err := x.upstreamRequest(secret)
	if err != nil {
		return nil, &upstreamError{status: http.StatusBadGateway, reason: err.Error()}, false
	}
	resp, fail = x.roundTrip(id, secret, req, countAttempt)
	if fail == nil {
		return resp, nil, false
	}
	return nil, fail, fail.body == nil || fail.outcome.Retryable()
}

// How an upstream call is counted in the metrics.
const (
	countAttempt = iota // an attempt at the client's call: a retry when it is not the first
	countCall           // a call that retries nothing (one page of a files listing)
)

// maxErrorBody is how much of an upstream error answer is read: enough for any of Google's.
const maxErrorBody = 256 << 10

// roundTrip sends req (built with the pool key secret) as key id and accounts for it the same
// way for every caller that sends with a pool key (the pool loop, key-bound calls, upload
// chunks, file listings): metrics, classification (a key error is confirmed by a probe
// first), the pool's report and the error log, the failure's masking. It returns the answer
// when the upstream took the request (status below 400, body unread); else the failure. Both
// are nil when the client is gone, and the exchange is then marked 499.
func (x *exchange) roundTrip(id int64, secret string, req *http.Request, count int) (*http.Response, *upstreamError) {
	record := x.attempted
	if count == countCall {
		record = x.called
	}
	sent := time.Now()
	resp, body, err := x.core.call(req, secret)
	took := time.Since(sent)
	if err != nil {
		o := keypool.ClassifyError(err)
		if o.Kind == keypool.Canceled || x.r.Context().Err() != nil {
			record(keypool.Canceled, 0, took)
			x.clientGone()
			return nil, nil
		}
		record(o.Kind, 0, took)
		x.requestID() // the client is told this id, and the error-log row holds it
		ch := x.report(id, o, 0)
		return nil, &upstreamError{status: http.StatusBadGateway, reason: o.Reason, outage: ch.Outage, logged: true}
	}
	if body == nil {
		record(keypool.Success, resp.StatusCode, took)
		x.report(id, keypool.Outcome{Kind: keypool.Success}, resp.StatusCode)
		return resp, nil
	}
	o := keypool.Classify(resp.StatusCode, body, time.Now())
	if o.Kind != keypool.Canceled && x.r.Context().Err() == nil {
		o = x.confirm(id, secret, o)
	}
	if o.Kind == keypool.Canceled || x.r.Context().Err() != nil {
		record(keypool.Canceled, resp.StatusCode, took)
		x.clientGone()
		return nil, nil
	}
	record(o.Kind, resp.StatusCode, took)
	ch := x.report(id, o, resp.StatusCode)
	return nil, &upstreamError{status: resp.StatusCode, header: resp.Header, body: body, outcome: o, outage: ch.Outage}
}

// confirm checks an answer that condemns key id (o.Confirm) with one free probe of the key
// before anything is done to it: if the key answers the probe, the answer was about the
// request and goes back to the client as a client error; if the probe condemns it too, the
// key is dead. When the probe says nothing either way, the key is left alone and the request
// may go to another key. Other outcomes pass unchanged.
func (x *exchange) confirm(id int64, secret string, o keypool.Outcome) keypool.Outcome {
	if o.Kind != keypool.KeyInvalid || !o.Confirm {
		return o
	}
	v := x.core.confirmKey(id, secret)
	switch v.Kind {
	case keypool.KeyInvalid:
		o.Confirm = false // confirmed: report disables the key
		if o.Project == "" {
			o.Project = v.Project
		}
		return o
	case keypool.Success, keypool.Quota:
		return keypool.Outcome{Kind: keypool.ClientError, Reason: o.Reason, Project: o.Project}
	default:
		return keypool.Outcome{Kind: keypool.KeyInvalid, Confirm: true, Reason: o.Reason, Project: o.Project}
	}
}

// clientGone marks the exchange as ended by the client.
func (x *exchange) clientGone() {
	x.status = statusClientClosed
	x.errText = "client closed the request"
}

// report tells the pool how an attempt went, persists what changed and logs failed attempts.
// A key error still waiting for confirmation (o.Confirm) changes nothing.
func (x *exchange) report(id int64, o keypool.Outcome, status int) keypool.Change {
	c := x.core
	var ch keypool.Change
	if o.Kind != keypool.KeyInvalid || !o.Confirm {
		ch = c.pool.Report(id, x.model, o, time.Now())
		c.persist(ch, o.Reason)
		x.reported(ch)
		if ch.Opened {
			c.logger.Warn("the upstream fails for this model with every key: holding requests back (one trial a second) until it recovers; no key is counted or ejected meanwhile",
				zap.String("model", x.model), zap.String("last_error", o.Reason))
		}
		if ch.Closed {
			c.logger.Info("the upstream serves this model again", zap.String("model", x.model))
		}
	}
	// The client's own mistakes are in the request log; the error log (and a key's failed
	// count) is for what went wrong upstream.
	if o.Kind == keypool.Success || o.Kind == keypool.Canceled || o.Kind == keypool.ClientError {
		return ch
	}
	if status == 0 {
		status = http.StatusBadGateway
	}
	msg := o.Kind.String() + ": " + o.Reason
	switch {
	case o.Kind == keypool.KeyInvalid && o.Confirm:
		msg = "key_invalid (not confirmed by a probe, key left in service): " + o.Reason
	case ch.Outage:
		msg = "transient (model outage, not counted against the key): " + o.Reason
	case ch.Ejected:
		msg = "transient: " + ch.Reason
	}
	x.logError(id, status, msg)
	return ch
}

// logError queues an error-log row about the exchange. Once the exchange has a request id
// (a client was told one), the row's message starts with it, so that the row can be found.
func (x *exchange) logError(keyID int64, status int, msg string) {
	if x.reqID != "" {
		msg = "request " + x.reqID + ": " + msg
	}
	x.core.store.LogError(store.ErrorLog{
		Time:        time.Now(),
		KeyID:       keyID,
		AccessKeyID: x.access,
		Model:       x.model,
		Path:        x.path,
		Status:      status,
		Message:     msg,
	})
}
