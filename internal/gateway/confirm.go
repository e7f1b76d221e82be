package gateway

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
)

const (
	// confirmedFineFor is how long a key that passed a confirming probe is taken as fine
	// without probing again: a burst of suspicious answers for one key costs one probe.
	confirmedFineFor = 30 * time.Second
	// maxConfirmMemory bounds the remembered verdicts.
	maxConfirmMemory = 4096
)

// confirmations runs the probes that confirm a key error before a key is disabled: at most
// one in flight per key (concurrent askers share its verdict), and a key found fine is not
// probed again for confirmedFineFor.
type confirmations struct {
	mu       sync.Mutex
	inflight map[int64]*confirmCall
	fine     map[int64]time.Time // key -> until when its "fine" verdict holds
}

// confirmCall is one probe in flight; verdict is set before done is closed.
type confirmCall struct {
	done    chan struct{}
	verdict keypool.Outcome
}

// confirmKey probes key id with the free models probe and returns what the answer means for
// the key: KeyInvalid confirms the key is dead; Success or Quota say the key works; anything
// else (network, 5xx, timeout, shutdown) gives no verdict. The probe does not end when the
// asking client goes away: other requests may be waiting for the same verdict.
func (c *Core) confirmKey(id int64, secret string) keypool.Outcome {
	cf := &c.confirms
	now := time.Now()
	cf.mu.Lock()
	if until, ok := cf.fine[id]; ok && now.Before(until) {
		cf.mu.Unlock()
		c.metrics.confirmations.WithLabelValues("remembered").Inc()
		return keypool.Outcome{Kind: keypool.Success}
	}
	if call, ok := cf.inflight[id]; ok {
		cf.mu.Unlock()
		<-call.done
		return call.verdict
	}
	if cf.inflight == nil {
		cf.inflight = make(map[int64]*confirmCall)
		cf.fine = make(map[int64]time.Time)
	}
	call := &confirmCall{done: make(chan struct{})}
	cf.inflight[id] = call
	cf.mu.Unlock()

	call.verdict = c.probeKey(c.ctx, id, secret)

	cf.mu.Lock()
	delete(cf.inflight, id)
	if k := call.verdict.Kind; k == keypool.Success || k == keypool.Quota {
		if len(cf.fine) >= maxConfirmMemory {
			for k, until := range cf.fine {
				if !now.Before(until) {
					delete(cf.fine, k)
				}
			}
			if len(cf.fine) >= maxConfirmMemory {
				clear(cf.fine)
			}
		}
		cf.fine[id] = time.Now().Add(confirmedFineFor)
	}
	cf.mu.Unlock()
	close(call.done)
	return call.verdict
}

// probeKey sends the free models probe with one key and classifies the answer.
func (c *Core) probeKey(ctx context.Context, id int64, secret string) keypool.Outcome {
	s := c.settings.Load()
	status, body, err := c.probe(ctx, secret, s, probeModels)
	var v keypool.Outcome
	if err != nil {
		v = keypool.ClassifyError(err)
	} else {
		v = keypool.Classify(status, body, time.Now())
	}
	verdict := "no_verdict"
	switch v.Kind {
	case keypool.KeyInvalid:
		verdict = "dead"
	case keypool.Success, keypool.Quota:
		verdict = "fine"
	}
	c.metrics.confirmations.WithLabelValues(verdict).Inc()
	c.logger.Info("probed an upstream key that got a key error",
		zap.Int64("key_id", id), zap.String("verdict", verdict), zap.Int("probe_status", status), zap.String("probe_reason", v.Reason))
	return v
}
