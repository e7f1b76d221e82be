// Package storetest is the conformance suite of package store: the behaviour every engine
// (store/sqlite, store/postgres) must show through the store.Store interface, checked without
// SQL and without an engine's internals. An engine's tests run it with their own opener:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, o storetest.Options) store.Store { ... })
//	}
//
// What only one engine can check (its schema and migrations, its SQL, busy and locked
// databases, a stopped server, files on disk) stays in that engine's own tests, which may use
// the helpers exported here (random request rows, bound sets and the checks of the statistics
// against the rows logged).
package storetest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Options are what a subtest asks of the store it opens, for behaviour that shows only with
// settings other than the defaults: a held or slow log writer, a small queue or small batches,
// small purge transactions, a log to read. A zero field means the engine's default.
type Options struct {
	// Logger receives the store's log; nil discards it.
	Logger *zap.Logger
	// QueueSize is the capacity of the log writer's queue.
	QueueSize int
	// BatchSize is the most log rows one write transaction takes.
	BatchSize int
	// Interval is the longest the log writer waits for a batch to fill.
	Interval time.Duration
	// Hold, when not nil, keeps the log writer from writing anything until it is closed (or
	// the store is): rows and key state queue meanwhile.
	Hold <-chan struct{}
	// PurgeBatch is how many rows one purge transaction deletes.
	PurgeBatch int
	// PurgePause is the pause between two purge transactions.
	PurgePause time.Duration
}

// Run runs the conformance suite, one subtest per behaviour, against the stores open returns.
//
// open returns an open store on the database of the (sub)test t, with the settings o asks
// (zero fields: the engine's defaults), failing t if it cannot. The first call for a t gets an
// empty database of its own. A later call for the same t, made after
// the store it returned before was closed, opens that same database again, with everything the
// closed store wrote: that is how the suite checks what survives a restart. Run closes every
// store it gets (Close may be called more than once), so open need not. The subtests do not
// call t.Parallel; times are passed to the store explicitly, so no test needs a clock of its
// own.
func Run(t *testing.T, open func(t *testing.T, o Options) store.Store) {
	o := opener(open)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.run(t, o) })
	}
}

// cases are the subtests of Run, grouped by concern.
var cases = []struct {
	name string
	run  func(*testing.T, opener)
}{
	// upstream keys, projects, cooldowns, tombstones
	{"AddKeysSkipsEmptyAndExisting", testAddKeysSkipsEmptyAndExisting},
	{"DeleteKeyAndSetKeyStatus", testDeleteKeyAndSetKeyStatus},
	{"ReviveKeyLeavesHandDisabledKeysAlone", testReviveKeyLeavesHandDisabledKeysAlone},
	{"AddLabeledKeys", testAddLabeledKeys},
	{"SetKeysProject", testSetKeysProject},
	{"SaveKeyProjectFillsOnlyEmptyLabels", testSaveKeyProjectFillsOnlyEmptyLabels},
	{"CooldownsPersist", testCooldownsPersist},
	{"PurgeCooldownsDropsOnlyThoseOver", testPurgeCooldownsDropsOnlyThoseOver},
	{"Tombstones", testTombstones},
	{"TombstoneOfATrimmedSecret", testTombstoneOfATrimmedSecret},
	{"OperatorLabelDiscardsPendingGuess", testOperatorLabelDiscardsPendingGuess},

	// access keys and their policies
	{"AccessKeys", testAccessKeys},
	{"AccessKeyPolicyAndPanelEdits", testAccessKeyPolicyAndPanelEdits},
	{"ApplyConfigAccessKeysNewerEditWins", testApplyConfigAccessKeysNewerEditWins},
	{"AccessKeyIDsAreNotReused", testAccessKeyIDsAreNotReused},

	// settings and admin sessions
	{"SettingsNewerEditWins", testSettingsNewerEditWins},
	{"SetSettingsIsAPanelEdit", testSetSettingsIsAPanelEdit},
	{"SessionsLifecycle", testSessionsLifecycle},
	{"PurgeSessionsDropsExpiredOnly", testPurgeSessionsDropsExpiredOnly},

	// resources and upload sessions
	{"UploadSessionsAndResources", testUploadSessionsAndResources},
	{"ResourceOwnersManyNames", testResourceOwnersManyNames},
	{"AddNewResourcesKeepsKnownOwners", testAddNewResourcesKeepsKnownOwners},

	// request and error logs
	{"RecentLogsFilterAndOrder", testRecentLogsFilterAndOrder},
	{"LogPagingAndFilters", testLogPagingAndFilters},
	{"CloseWritesEverythingQueued", testCloseWritesEverythingQueued},
	{"LoggingDuringCloseLosesNothingUncounted", testLoggingDuringCloseLosesNothingUncounted},
	{"UsageCountersAreAggregated", testUsageCountersAreAggregated},
	{"LongTextIsTruncatedOnRuneBoundary", testLongTextIsTruncatedOnRuneBoundary},
	{"PurgeKeepsRowsAtAndAfterTheCutoff", testPurgeKeepsRowsAtAndAfterTheCutoff},
	{"PurgeWorksInBatches", testPurgeWorksInBatches},
	{"PurgeStopsWhenContextEnds", testPurgeStopsWhenContextEnds},
	{"PurgeLetsTheLogWriterIn", testPurgeLetsTheLogWriterIn},

	// the log writer: flushing, coalescing, the operator's precedence, drops
	{"FlushCommitsWhatCameBefore", testFlushCommitsWhatCameBefore},
	{"KeyStatesAreCoalesced", testKeyStatesAreCoalesced},
	{"ManualDisableIsNotOverwrittenByThePool", testManualDisableIsNotOverwrittenByThePool},
	{"FullQueueDropsAndCounts", testFullQueueDropsAndCounts},
	{"RowsAfterCloseAreCounted", testRowsAfterCloseAreCounted},

	// statistics
	{"UsageBuckets", testUsageBuckets},
	{"PurgeUsageKeepsSlotsEndingAfterTheCutoff", testPurgeUsageKeepsSlotsEndingAfterTheCutoff},
	{"AccessKeyUsageFigures", testAccessKeyUsageFigures},
	{"AccessKeyCounts", testAccessKeyCounts},
	{"PurgeUsagePurgesAccessKeySums", testPurgeUsagePurgesAccessKeySums},
	{"UsageFromSlotsMatchesRows", testUsageFromSlotsMatchesRows},
	{"AccessKeyUsageFromSlotsMatchesRows", testAccessKeyUsageFromSlotsMatchesRows},
	{"UsageBefore1970", testUsageBefore1970},
}

// opener is the engine's open function given to Run.
type opener func(t *testing.T, o Options) store.Store

// open opens t's database (again, after a Close: see Run) with the engine's defaults and
// closes it at the end of t.
func (o opener) open(t *testing.T) store.Store {
	t.Helper()
	return o.openWith(t, Options{})
}

// openWith is open with the settings opts.
func (o opener) openWith(t *testing.T, opts Options) store.Store {
	t.Helper()
	s := o(t, opts)
	if s == nil {
		t.Fatal("the engine's open returned no store")
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// ---- helpers shared by the subtests

// addKeys adds upstream keys to s and returns every stored key.
func addKeys(t testing.TB, s store.Store, secrets ...string) []store.Key {
	t.Helper()
	ctx := context.Background()
	if _, err := s.AddKeys(ctx, secrets); err != nil {
		t.Fatal(err)
	}
	keys, err := s.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// storeWithKeys opens t's store holding the given upstream keys, and returns it with their ids
// in the same order.
func storeWithKeys(t *testing.T, o opener, secrets ...string) (store.Store, []int64) {
	t.Helper()
	s := o.open(t)
	keys := addKeys(t, s, secrets...)
	if len(keys) != len(secrets) {
		t.Fatalf("keys %v", keys)
	}
	ids := make([]int64, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	return s, ids
}

// countRequests returns the number of stored request rows.
func countRequests(t testing.TB, s store.Store) int64 {
	t.Helper()
	n, err := s.CountRequestLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}
