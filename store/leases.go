package store

import (
	"context"
	"time"
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
// The types mirror those of package tenant field for field (tenant.LeaseRequest and so on),
// so that one converts to the other.
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

// LeaseRequest asks for slices of one access key's limits, after settling the slices it
// replaces. A zero Want asks for none of that limit.
type LeaseRequest struct {
	// Instance names the instance asking: its slots are its own, kept while its heartbeat
	// lives.
	Instance string
	// AccessKeyID is the access key whose limits these are.
	AccessKeyID int64
	// Seq grows with every call of the instance that writes its slots: a slot count of a
	// lower Seq than the one stored is ignored (a late statement never undoes a newer one).
	Seq int64
	// Lifetime is how long rpm and tpm units may be used after the call was sent: they
	// count against the limit from their grant until Lifetime + 60 s after it.
	Lifetime time.Duration
	// SlotTTL is how long the instance's slots outlive its last heartbeat.
	SlotTTL time.Duration

	// RPMDone finishes an earlier rpm grant (0: none): RPMDoneUsed of its units were used,
	// the rest go back.
	RPMDone, RPMDoneUsed int64
	// RPDReturn gives back unused rpd units of the day RPDReturnDay.
	RPDReturn, RPDReturnDay int64
	// TPMDone finishes an earlier tpm grant (0: none): TPMDoneUsed tokens were charged to it
	// (more than granted when answers in flight went past it).
	TPMDone, TPMDoneUsed int64
	// TPMCharge is tokens charged outside any tpm grant: they count from now.
	TPMCharge int64
	// BudgetReturn gives back unused tokens, and BudgetCharge charges tokens used beyond the
	// grants, of the budget's period starting at BudgetDonePeriod.
	BudgetReturn, BudgetCharge, BudgetDonePeriod int64

	// RPM is the requests-per-minute limit; RPMWant the units wanted.
	RPM, RPMWant int64
	// RPD is the requests-per-day limit; RPDWant the units wanted for the day starting at Day
	// (unix milliseconds).
	RPD, RPDWant, Day int64
	// TPM is the tokens-per-minute limit; TPMWant the tokens wanted.
	TPM, TPMWant int64
	// Budget is the token budget; BudgetWant the tokens wanted of its period starting at
	// Period (unix milliseconds).
	Budget, BudgetWant, Period int64
	// Concurrency is the limit of requests in flight; SlotsHeld the slots the instance holds
	// now and SlotsWant how many more it wants.
	Concurrency, SlotsHeld, SlotsWant int64
}

// LeaseGrant is what a Lease granted.
type LeaseGrant struct {
	// RPM is the rpm units granted, RPMLease the grant's id (0 when none), RPMUsed the units
	// counting against the limit now (this grant's included) and RPMRetry how long until the
	// oldest of them stops counting.
	RPM, RPMLease, RPMUsed int64
	RPMRetry               time.Duration
	// RPD is the rpd units granted and RPDUsed the day's units counted with them.
	RPD, RPDUsed int64
	// TPM is the tokens of the minute granted, TPMLease the grant's id, TPMUsed the tokens
	// counting now (this grant's included) and TPMRetry how long until the oldest stop.
	TPM, TPMLease, TPMUsed int64
	TPMRetry               time.Duration
	// Budget is the tokens of the budget's period granted and BudgetUsed the period's tokens
	// counted with them (charged, or granted and not given back).
	Budget, BudgetUsed int64
	// Slots is the slots granted and SlotsUsed the slots the cluster holds (this instance's
	// included).
	Slots, SlotsUsed int64
}

// Settlement is what an instance settles for one access key.
type Settlement struct {
	// AccessKeyID is the access key.
	AccessKeyID int64
	// Seq orders the slot counts, as LeaseRequest.Seq.
	Seq int64
	// RPMLease finishes an rpm grant (0: none): RPMUsed of its units were used.
	RPMLease, RPMUsed int64
	// RPDReturn gives back unused rpd units of the day Day.
	RPDReturn, Day int64
	// TPMLease finishes a tpm grant (0: none): TPMUsed tokens were charged to it.
	TPMLease, TPMUsed int64
	// TPMCharge is tokens charged outside any tpm grant: they count from now.
	TPMCharge int64
	// BudgetReturn gives back unused tokens, and BudgetCharge charges tokens used beyond the
	// grants, of the budget's period starting at Period.
	BudgetReturn, BudgetCharge, Period int64
	// SetSlots writes Slots as the number of slots the instance holds.
	SetSlots bool
	Slots    int64
}
