package postgres

// The ledger of the access keys' limits shared by the instances (store.Leaser; the tenant
// package's cluster mode is its client). Each call is one batch of statements sent at once
// (one round trip) and run as one implicit transaction; a Lease takes a transaction advisory
// lock per access key first, so that its grants are decided one at a time against the
// cluster's totals. All times come from the database's clock (clock_timestamp(), read after
// the lock): an instance only measures durations from the moment it sent a call, so neither
// clock skew nor latency can stretch a slice. See migration 2 for the tables.
//
// Returns that subtract (rpd units) are applied once, never retried by the client; returns that
// write an absolute value (the units an rpm grant used, the slots an instance holds, guarded by
// its sequence number) may be repeated. Token charges add up: one repeated after a failure
// that was in fact applied counts twice, which errs on the side of refusing.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

var _ store.Leaser = (*Store)(nil)

// nowMS is the database's clock now, in unix milliseconds.
const nowMS = `floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint`

// limitLockSpace marks the advisory locks of the ledger: the two-key form (key space of its
// own, apart from the one-key locks of migrations and leadership), the first key mixed with it.
const limitLockSpace = 0x6c696d74 // "limt"

// limitLock is the two keys of the advisory lock of access key id's limits.
func limitLock(id int64) (int32, int32) {
	return int32(uint32(id>>32) ^ limitLockSpace), int32(uint32(id))
}

// cleanupEvery spaces the deletions of the ledger's old rows.
const cleanupEvery = time.Minute

// counterMaxAge is how long the per-period counters are kept: longer than the longest period
// (a month).
const counterMaxAge = 40 * 24 * time.Hour

const (
	// grantSQL grants up to $2 units of the per-minute limit $3 of kind $5 ('rpm' or 'tpm')
	// to access key $1, usable for $4 ms: only while the units of the slices that still count
	// (until 60 s after their end) plus the new ones stay within the limit. It returns the
	// grant's id (0: none), the units, the units counted with them and how long until the
	// first counted slice stops counting.
	grantSQL = `
WITH t AS (SELECT ` + nowMS + ` AS now),
w AS (SELECT coalesce(sum(g.units), 0)::bigint AS used, min(g.usable_until) AS first
	FROM limit_grants g, t WHERE g.access_key_id = $1 AND g.kind = $5::text AND g.usable_until + 60000 > t.now),
n AS (SELECT LEAST($2::bigint, GREATEST($3::bigint - w.used, 0)) AS n FROM w),
ins AS (INSERT INTO limit_grants (access_key_id, kind, granted_at, usable_until, units)
	SELECT $1, $5::text, t.now, t.now + $4::bigint, n.n FROM t, n WHERE n.n > 0 RETURNING id)
SELECT coalesce((SELECT id FROM ins), 0), n.n, w.used + n.n, coalesce(w.first + 60000 - t.now, 0)
FROM t, w, n`

	// doneSQL finishes grant $1 of access key $3: $2 of its units were used (tokens: charged,
	// more than granted when answers went past it).
	doneSQL = `UPDATE limit_grants SET units = $2 WHERE id = $1 AND access_key_id = $3`

	// tpmChargeSQL counts $2 tokens of access key $1 charged outside any slice, from now.
	tpmChargeSQL = `
INSERT INTO limit_grants (access_key_id, kind, granted_at, usable_until, units)
SELECT $1, 'tpm', t.now, t.now, $2 FROM (SELECT ` + nowMS + ` AS now) t`

	// seedSQL creates the counter of kind $2 of access key $1 for the period starting at $3,
	// from the request log's sums since the slot $4 holding it (the requests no limit
	// refused, or the tokens), as a start of one instance restores its counts; an existing
	// counter is left alone.
	seedSQL = `
INSERT INTO limit_counters (access_key_id, kind, period_start, used)
SELECT $1, $2::text, $3, (
	SELECT coalesce(CASE WHEN $2::text = 'rpd' THEN sum(requests) FILTER (WHERE limit_hit = '') ELSE sum(total_tokens) END, 0)::bigint
	FROM access_key_usage WHERE slot >= $4 AND access_key_id = $1)
WHERE NOT EXISTS (SELECT 1 FROM limit_counters WHERE access_key_id = $1 AND kind = $2::text AND period_start = $3)
ON CONFLICT DO NOTHING`

	// counterGrantSQL grants up to $3 units of the limit $4 of the counter of kind $5 of
	// access key $1 for the period starting at $2; it returns the units and the period's
	// units counted with them.
	counterGrantSQL = `
UPDATE limit_counters SET granted = LEAST($3::bigint, GREATEST($4::bigint - used, 0)),
	used = used + LEAST($3::bigint, GREATEST($4::bigint - used, 0))
WHERE access_key_id = $1 AND kind = $5::text AND period_start = $2
RETURNING granted, used`

	// counterReturnSQL gives back $3 units of the counter of kind $4 of access key $1 for the
	// period starting at $2.
	counterReturnSQL = `
UPDATE limit_counters SET used = GREATEST(used - $3::bigint, 0)
WHERE access_key_id = $1 AND kind = $4::text AND period_start = $2`

	// counterChargeSQL adds $3 to the counter of kind $4 of access key $1 for the period
	// starting at $2.
	counterChargeSQL = `
UPDATE limit_counters SET used = used + $3::bigint WHERE access_key_id = $1 AND kind = $4::text AND period_start = $2`

	// heartbeatSQL keeps instance $1's slots its own for $2 ms more.
	heartbeatSQL = `
INSERT INTO limit_instances (id, expires_at) VALUES ($1, ` + nowMS + ` + $2::bigint)
ON CONFLICT (id) DO UPDATE SET expires_at = GREATEST(limit_instances.expires_at, excluded.expires_at)`

	// slotsGrantSQL lets instance $2, which holds $3 slots of access key $1, hold up to $4
	// more within the concurrency limit $5, counting the slots of the other instances whose
	// heartbeat lives. (Until the server has run for a slot TTL, $6 ms, every heartbeat
	// counts as alive: after a restart of the database the instances must first have had the
	// time to renew theirs.) The count is written only if $7 is newer than the one stored.
	// It returns the slots granted and the cluster's slots with them.
	slotsGrantSQL = `
WITH t AS (SELECT ` + nowMS + ` AS now,
	floor(extract(epoch FROM clock_timestamp() - pg_postmaster_start_time()) * 1000)::bigint > $6::bigint AS settled),
o AS (SELECT coalesce(sum(s.slots), 0)::bigint AS n
	FROM limit_slots s CROSS JOIN t LEFT JOIN limit_instances i ON i.id = s.instance
	WHERE s.access_key_id = $1 AND s.instance <> $2 AND (NOT t.settled OR i.expires_at > t.now)),
g AS (SELECT GREATEST(LEAST($3::bigint + $4::bigint, $5::bigint - o.n), $3::bigint) AS total, o.n AS others FROM o),
up AS (INSERT INTO limit_slots AS l (access_key_id, instance, slots, seq) SELECT $1, $2, g.total, $7 FROM g
	ON CONFLICT (access_key_id, instance) DO UPDATE SET slots = excluded.slots, seq = excluded.seq
	WHERE l.seq < excluded.seq
	RETURNING 1)
SELECT CASE WHEN EXISTS (SELECT 1 FROM up) THEN g.total - $3::bigint ELSE 0 END, g.others + g.total FROM g`

	// slotsSetSQL writes that instance $2 holds $3 slots of access key $1, unless a newer
	// count than $4 is stored.
	slotsSetSQL = `UPDATE limit_slots SET slots = $3, seq = $4 WHERE access_key_id = $1 AND instance = $2 AND seq < $4`
)

// Kinds of the ledger's rows.
const (
	kindRPM    = "rpm"
	kindTPM    = "tpm"
	kindRPD    = "rpd"
	kindTokens = "tokens"
)

// queueGrant queues the grant of a per-minute limit of kind, read into units, id, used and
// retry.
func queueGrant(b *pgx.Batch, kind string, key, want, limit int64, lifetime time.Duration, units, id, used *int64, retry *time.Duration) {
	b.Queue(grantSQL, key, want, limit, lifetime.Milliseconds(), kind).QueryRow(func(row pgx.Row) error {
		var ms int64
		err := row.Scan(id, units, used, &ms)
		*retry = time.Duration(max(ms, 0)) * time.Millisecond
		return err
	})
}

// queueCounterGrant queues the grant of a per-period limit of kind (the counter created from the
// request log first), read into units and used.
func queueCounterGrant(b *pgx.Batch, kind string, key, period, want, limit int64, units, used *int64) {
	b.Queue(seedSQL, key, kind, period, slotOf(period))
	b.Queue(counterGrantSQL, key, period, want, limit, kind).QueryRow(func(row pgx.Row) error {
		return row.Scan(units, used)
	})
}

// queueSettle queues what settles the slices of access key key: grants finished, tokens
// charged beyond them, units given back.
func queueSettle(b *pgx.Batch, key, rpmDone, rpmUsed, rpdReturn, day, tpmDone, tpmUsed, tpmCharge, budgetReturn, budgetCharge, period int64) {
	if rpmDone != 0 {
		b.Queue(doneSQL, rpmDone, rpmUsed, key)
	}
	if rpdReturn > 0 {
		b.Queue(counterReturnSQL, key, day, rpdReturn, kindRPD)
	}
	if tpmDone != 0 {
		b.Queue(doneSQL, tpmDone, tpmUsed, key)
	}
	if tpmCharge > 0 {
		b.Queue(tpmChargeSQL, key, tpmCharge)
	}
	if budgetReturn > 0 {
		b.Queue(counterReturnSQL, key, period, budgetReturn, kindTokens)
	}
	if budgetCharge > 0 {
		b.Queue(seedSQL, key, kindTokens, period, slotOf(period))
		b.Queue(counterChargeSQL, key, period, budgetCharge, kindTokens)
	}
}

// Lease settles the slices r replaces, then grants slices of one access key's limits, in one
// round trip and one transaction under the key's advisory lock. See store.Leaser.
func (s *Store) Lease(ctx context.Context, r store.LeaseRequest) (store.LeaseGrant, error) {
	var g store.LeaseGrant
	b := &pgx.Batch{}
	hi, lo := limitLock(r.AccessKeyID)
	b.Queue(`SELECT pg_advisory_xact_lock($1, $2)`, hi, lo)
	queueSettle(b, r.AccessKeyID, r.RPMDone, r.RPMDoneUsed, r.RPDReturn, r.RPDReturnDay, r.TPMDone, r.TPMDoneUsed,
		r.TPMCharge, r.BudgetReturn, r.BudgetCharge, r.BudgetDonePeriod)
	if r.RPMWant > 0 {
		queueGrant(b, kindRPM, r.AccessKeyID, r.RPMWant, r.RPM, r.Lifetime, &g.RPM, &g.RPMLease, &g.RPMUsed, &g.RPMRetry)
	}
	if r.RPDWant > 0 {
		queueCounterGrant(b, kindRPD, r.AccessKeyID, r.Day, r.RPDWant, r.RPD, &g.RPD, &g.RPDUsed)
	}
	if r.TPMWant > 0 {
		queueGrant(b, kindTPM, r.AccessKeyID, r.TPMWant, r.TPM, r.Lifetime, &g.TPM, &g.TPMLease, &g.TPMUsed, &g.TPMRetry)
	}
	if r.BudgetWant > 0 {
		queueCounterGrant(b, kindTokens, r.AccessKeyID, r.Period, r.BudgetWant, r.Budget, &g.Budget, &g.BudgetUsed)
	}
	if r.Concurrency > 0 {
		b.Queue(heartbeatSQL, r.Instance, r.SlotTTL.Milliseconds())
		b.Queue(slotsGrantSQL, r.AccessKeyID, r.Instance, r.SlotsHeld, max(r.SlotsWant, 0), r.Concurrency,
			r.SlotTTL.Milliseconds(), r.Seq).QueryRow(func(row pgx.Row) error {
			return row.Scan(&g.Slots, &g.SlotsUsed)
		})
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return store.LeaseGrant{}, wrap("lease limits", err)
	}
	return g, nil
}

// Settle applies what instance gives back and charges for each item and renews its heartbeat
// for slotTTL, in one round trip and one transaction. Once a minute it also deletes the
// ledger's old rows. See store.Leaser.
func (s *Store) Settle(ctx context.Context, instance string, slotTTL time.Duration, items []store.Settlement) error {
	b := &pgx.Batch{}
	b.Queue(heartbeatSQL, instance, slotTTL.Milliseconds())
	for _, it := range items {
		queueSettle(b, it.AccessKeyID, it.RPMLease, it.RPMUsed, it.RPDReturn, it.Day, it.TPMLease, it.TPMUsed,
			it.TPMCharge, it.BudgetReturn, it.BudgetCharge, it.Period)
		if it.SetSlots {
			b.Queue(slotsSetSQL, it.AccessKeyID, instance, max(it.Slots, 0), it.Seq)
		}
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return wrap("settle limits", err)
	}
	s.cleanLedger(ctx, slotTTL)
	return nil
}

// ledgerCleanups holds, per *Store, when cleanLedger last ran (*atomic.Int64 of unix
// nanoseconds). Every instance cleans, which is harmless.
var ledgerCleanups sync.Map

// cleanLedger deletes, at most once per cleanupEvery, the ledger's rows no call reads any
// more: rpm and tpm slices that stopped counting a minute ago, counters of periods
// long over, the slots of instances whose heartbeat lapsed (once the server has run for a slot
// TTL) and instances dead for a day. It is best effort: a failure waits for the next time.
func (s *Store) cleanLedger(ctx context.Context, slotTTL time.Duration) {
	v, _ := ledgerCleanups.LoadOrStore(s, new(atomic.Int64))
	at := v.(*atomic.Int64)
	now := time.Now().UnixNano()
	last := at.Load()
	if now-last < int64(cleanupEvery) || !at.CompareAndSwap(last, now) {
		return
	}
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM limit_grants WHERE usable_until < ` + nowMS + ` - 120000`)
	b.Queue(`DELETE FROM limit_counters WHERE period_start < `+nowMS+` - $1::bigint`, counterMaxAge.Milliseconds())
	b.Queue(`
		DELETE FROM limit_slots s
		WHERE floor(extract(epoch FROM clock_timestamp() - pg_postmaster_start_time()) * 1000)::bigint > $1::bigint
		AND NOT EXISTS (SELECT 1 FROM limit_instances i WHERE i.id = s.instance AND i.expires_at > `+nowMS+`)`,
		slotTTL.Milliseconds())
	b.Queue(`DELETE FROM limit_instances WHERE expires_at < ` + nowMS + ` - 86400000`)
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		s.logger.Debug("deleting the limits ledger's old rows failed; trying again later")
	}
}
