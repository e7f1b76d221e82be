package store

import (
	"context"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// Leaser is what an engine shared by several gateway instances offers (PostgreSQL) so that the
// access keys' limits hold for the cluster, not per instance: a ledger of the slices of each
// limit the instances lease. An engine of one instance (SQLite) does not implement it; the
// gateway then counts every limit in memory alone.
//
// Each instance takes slices (units of rpm and rpd, tokens of tpm and of the token budget,
// concurrency slots) ahead of the requests that use them and gives back what it did not use;
// tokens, known only once an answer ends, are taken from the token slices then, and what
// answers in flight used beyond them is charged afterwards. Every grant is decided under a per-access-key lock, against the
// cluster's totals, so that the units granted never exceed a limit. Times are the database's
// clock; an instance only measures durations from the moment it sent a call.
//
// Its methods are those of tenant.Ledger.
type Leaser interface {
	// Lease grants slices of one access key's limits, and reads its token totals, in one
	// atomic call. It first applies the returns the request carries.
	Lease(ctx context.Context, r LeaseRequest) (LeaseGrant, error)
	// Settle applies, for many access keys at once, what an instance gives back (unused
	// units and tokens, the slots it now holds) and the tokens it charged beyond its grants,
	// and renews the instance's heartbeat (which keeps its slots its own). An instance calls
	// it every fraction of a second, also with no item, to renew the heartbeat.
	Settle(ctx context.Context, instance string, slotTTL time.Duration, items []Settlement) error
}

// The records a Leaser exchanges are the limiter's own (package tenant, which defines and
// documents them), so that an engine serves as the limiter's ledger as it is.
type (
	// LeaseRequest asks for slices of one access key's limits (tenant.LeaseRequest).
	LeaseRequest = tenant.LeaseRequest
	// LeaseGrant is what a Lease granted (tenant.LeaseGrant).
	LeaseGrant = tenant.LeaseGrant
	// Settlement is what an instance settles for one access key (tenant.Settlement).
	Settlement = tenant.Settlement
)
