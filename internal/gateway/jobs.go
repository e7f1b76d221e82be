package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-co-op/gocron/v2"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Names of the scheduled jobs, as gocron and the log show them.
const (
	jobValidation = "key validation"
	jobRetention  = "log retention"
)

// Log messages that close a run of each job (tests count them).
const (
	msgValidationDone = "key validation finished"
	msgRetentionDone  = "log retention finished"
	msgJobSkipped     = "scheduled job still running, this run is skipped"
)

// retentionHour is the local hour, in the timezone setting, at which old log rows are deleted.
const retentionHour = 3

// recheckCoolingFor is how far ahead a cooldown must reach for the scheduled validation to
// re-check its key: keys cooling "for a day" (a daily quota, no access to the model), not
// keys waiting out a per-minute limit.
const recheckCoolingFor = 12 * time.Hour

// jobs is the core's scheduler with its two jobs: key validation every validation_interval
// and log retention daily at 03:00 in the configured timezone. A gocron scheduler's location
// is fixed, so a new timezone gets a new scheduler; mu makes sure that exactly one is ever
// running.
type jobs struct {
	mu         sync.Mutex
	sched      gocron.Scheduler
	validation gocron.Job
	tz         string        // name of sched's location
	interval   time.Duration // validation interval sched was given
	started    bool          // startJobs was called: schedulers made from now on start at once
	stopped    bool          // stopJobs was called: nothing is scheduled again

	// A job's flag is set while it runs, whichever scheduler started it.
	validating, purging atomic.Bool
}

// now is the time on the core's clock: the real one, or the fake one a test set.
func (c *Core) now() time.Time {
	if c.clock != nil {
		return c.clock.Now()
	}
	return time.Now()
}

// reschedule brings the jobs in line with the current settings, at once: a new validation
// interval makes the next check one interval from now, a new timezone moves the daily retention
// run to 03:00 there (through a new scheduler, the old one being shut down first). It is
// called whenever the settings are reloaded, and does nothing when nothing changed.
func (c *Core) reschedule() error {
	s := c.settings.Load()
	j := &c.jobs
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.stopped {
		return nil
	}
	tz := s.timezone.String()
	if j.sched != nil && j.tz == tz {
		if j.interval == s.validationInterval {
			return nil
		}
		job, err := j.sched.Update(j.validation.ID(), gocron.DurationJob(s.validationInterval),
			c.validationTask(), c.jobOptions(jobValidation)...)
		if err != nil {
			return fmt.Errorf("rescheduling %s: %v", jobValidation, err)
		}
		j.validation, j.interval = job, s.validationInterval
		return nil
	}
	sched, validation, err := c.newScheduler(s)
	if err != nil {
		return err
	}
	if j.sched != nil {
		// Shutting down cancels the context of a job that is running; the jobs stop early.
		if err := j.sched.Shutdown(); err != nil {
			c.logger.Warn("stopping the previous scheduler", zap.Error(err))
		}
	}
	j.sched, j.validation, j.tz, j.interval = sched, validation, tz, s.validationInterval
	if j.started {
		sched.Start()
	}
	return nil
}

// newScheduler builds a scheduler in the settings' timezone with both jobs, not started.
func (c *Core) newScheduler(s *settings) (gocron.Scheduler, gocron.Job, error) {
	opts := []gocron.SchedulerOption{
		gocron.WithLocation(s.timezone),
		gocron.WithLogger(gocronLogger{c.logger.Named("scheduler")}),
	}
	if c.clock != nil {
		opts = append(opts, gocron.WithClock(c.clock))
	}
	sched, err := gocron.NewScheduler(opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("creating scheduler: %v", err)
	}
	validation, err := sched.NewJob(gocron.DurationJob(s.validationInterval),
		c.validationTask(), c.jobOptions(jobValidation)...)
	if err != nil {
		_ = sched.Shutdown()
		return nil, nil, fmt.Errorf("scheduling %s: %v", jobValidation, err)
	}
	if _, err := sched.NewJob(gocron.DailyJob(1, gocron.NewAtTimes(gocron.NewAtTime(retentionHour, 0, 0))),
		c.retentionTask(), c.jobOptions(jobRetention)...); err != nil {
		_ = sched.Shutdown()
		return nil, nil, fmt.Errorf("scheduling %s: %v", jobRetention, err)
	}
	return sched, validation, nil
}

// jobOptions are the options of both jobs. Where 03:00 does not exist on the day clocks go
// forward, retention runs right after the jump.
func (c *Core) jobOptions(name string) []gocron.JobOption {
	return []gocron.JobOption{
		gocron.WithName(name),
		gocron.WithDaylightSavingsTimePolicy(gocron.DaylightSavingsTimeRunAfterTransition),
	}
}

func (c *Core) validationTask() gocron.Task {
	return gocron.NewTask(c.exclusive(jobValidation, &c.jobs.validating, c.runValidation))
}

func (c *Core) retentionTask() gocron.Task {
	return gocron.NewTask(c.exclusive(jobRetention, &c.jobs.purging, c.runRetention))
}

// exclusive makes sure a job never overlaps itself: a run that comes due while the previous
// one is still going is skipped. (gocron's singleton mode does this too, but it reschedules a
// run from a goroutine that races with the run's completion, so a daily run can fire twice
// when the clock has not moved on, as with a fake clock or a coarse one.)
func (c *Core) exclusive(name string, busy *atomic.Bool, run func(context.Context)) func(context.Context) {
	return func(ctx context.Context) {
		if !busy.CompareAndSwap(false, true) {
			c.logger.Debug(msgJobSkipped, zap.String("job", name))
			return
		}
		defer busy.Store(false)
		if !c.leads(ctx) {
			c.logger.Debug("scheduled job left to the instance that leads the cluster", zap.String("job", name))
			return
		}
		run(ctx)
	}
}

// startJobs starts the scheduler; only the first call does anything.
func (c *Core) startJobs() {
	j := &c.jobs
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.started || j.stopped || j.sched == nil {
		return
	}
	j.started = true
	j.sched.Start()
}

// stopJobs shuts the scheduler down for good, waiting for running jobs (whose contexts are
// canceled) to return.
func (c *Core) stopJobs() error {
	j := &c.jobs
	j.mu.Lock()
	defer j.mu.Unlock()
	j.stopped = true
	if j.sched == nil {
		return nil
	}
	err := j.sched.Shutdown()
	j.sched, j.validation = nil, nil
	return err
}

// schedulerJobs returns the jobs of the running scheduler (for tests and status pages).
func (c *Core) schedulerJobs() []gocron.Job {
	j := &c.jobs
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.sched == nil {
		return nil
	}
	return j.sched.Jobs()
}

// runValidation is the scheduled key check: disabled keys (except those an operator disabled)
// and keys cooling for a day are probed, and re-enabled, kept out or cooled as the upstream
// answers.
func (c *Core) runValidation(ctx context.Context) {
	start := time.Now()
	ids, err := c.keysToRecheck(ctx, start)
	if err != nil {
		c.logger.Error("key validation: listing keys", zap.Error(err))
		return
	}
	if len(ids) == 0 {
		c.logger.Debug(msgValidationDone, zap.Int("checked", 0))
		return
	}
	results, err := c.validateKeys(ctx, ids, defaultValidationConcurrency, nil)
	if err != nil {
		c.logger.Error("key validation failed", zap.Error(err))
		return
	}
	count := make(map[string]int)
	for _, r := range results {
		count[r.Action]++
	}
	c.logger.Info(msgValidationDone,
		zap.Int("checked", len(results)),
		zap.Int("enabled", count[actionEnabled]),
		zap.Int("disabled", count[actionDisabled]),
		zap.Int("cooling", count[actionCooling]),
		zap.Int("unchanged", count[actionUnchanged]+count[actionValid]),
		zap.Duration("took", time.Since(start)))
}

// keysToRecheck lists the keys the scheduled validation checks: disabled ones, except those
// an operator disabled by hand, and enabled ones with a cooldown reaching recheckCoolingFor
// past now.
func (c *Core) keysToRecheck(ctx context.Context, now time.Time) ([]int64, error) {
	keys, err := c.store.Keys(ctx)
	if err != nil {
		return nil, err
	}
	states := c.poolStates(now)
	horizon := now.Add(recheckCoolingFor)
	var ids []int64
	for _, k := range keys {
		if k.ManualDisabled {
			continue
		}
		st := states[k.ID]
		if isDisabled(k, st) {
			ids = append(ids, k.ID)
			continue
		}
		for _, cd := range st.Cooldowns {
			if !cd.Until.Before(horizon) {
				ids = append(ids, k.ID)
				break
			}
		}
	}
	return ids, nil
}

// runRetention deletes request rows older than request_log_retention, error rows older than
// error_log_retention, expired admin sessions, cooldowns that are over, the records of expired
// key-bound resources and upload sessions, and the request log's per-slot sums older than
// store.UsageRetention or request_log_retention, whichever is longer. The store deletes in small batches, so the
// proxy's log writer is never held up for long.
func (c *Core) runRetention(ctx context.Context) {
	s := c.settings.Load()
	now := c.now()
	reqs, err1 := c.store.PurgeRequestLogs(ctx, now.Add(-s.requestRetention))
	errs, err2 := c.store.PurgeErrorLogs(ctx, now.Add(-s.errorRetention))
	sess, err3 := c.store.PurgeSessions(ctx, now)
	res, uploads, err4 := c.purgeBound(ctx, now) // resources.go
	cds, err5 := c.store.PurgeCooldowns(ctx, now)
	slots, err6 := c.store.PurgeUsage(ctx, now.Add(-max(s.requestRetention, store.UsageRetention)))
	if err := errors.Join(err1, err2, err3, err4, err5, err6); err != nil {
		c.logger.Error("log retention failed", zap.Error(err))
	}
	c.logger.Info(msgRetentionDone, zap.Time("at", now),
		zap.Int64("request_rows", reqs),
		zap.Int64("error_rows", errs),
		zap.Int64("sessions", sess),
		zap.Int64("resources", res),
		zap.Int64("upload_sessions", uploads),
		zap.Int64("cooldowns", cds),
		zap.Int64("usage_slots", slots))
}

// gocronLogger routes gocron's messages to Caddy's logger.
type gocronLogger struct{ l *zap.Logger }

func (g gocronLogger) Debug(msg string, args ...any) { g.l.Sugar().Debugw(msg, args...) }
func (g gocronLogger) Info(msg string, args ...any)  { g.l.Sugar().Infow(msg, args...) }
func (g gocronLogger) Warn(msg string, args ...any)  { g.l.Sugar().Warnw(msg, args...) }
func (g gocronLogger) Error(msg string, args ...any) { g.l.Sugar().Errorw(msg, args...) }
