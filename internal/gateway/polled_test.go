package gateway

import (
	"context"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// polledAnswers are finished batches and operations as Google answers their poll, by path.
// Their model output and the client's own metadata name files too, in fields no file owner
// is documented in.
var polledAnswers = map[string]string{
	// Inlined responses: generated content (a model's text, a function call's arguments) and
	// the metadata the client attached to each request, echoed back. None of them is a file
	// the batch made.
	"/v1beta/batches/inlined": `{"name":"batches/inlined","done":true,"metadata":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",` +
		`"name":"batches/inlined","state":"BATCH_STATE_SUCCEEDED","output":{"inlinedResponses":{"inlinedResponses":[` +
		`{"response":{"candidates":[{"content":{"role":"model","parts":[{"text":"files/abc123"},{"functionCall":{"name":"open","args":{"file":"files/abc123","other":"files/modelsaid"}}}]}}]},` +
		`"metadata":{"key":"files/abc123"}}]}}},` +
		`"response":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput","inlinedResponses":{"inlinedResponses":[` +
		`{"response":{"candidates":[{"content":{"role":"model","parts":[{"text":"files/abc123"},{"functionCall":{"name":"open","args":{"file":"files/abc123","other":"files/modelsaid"}}}]}}]},` +
		`"metadata":{"key":"files/abc123"}}]}}}`,
	// A documented responsesFile of a file the gateway has not seen: the poller's project made it.
	"/v1beta/batches/fresh": `{"name":"batches/fresh","done":true,"metadata":{"state":"BATCH_STATE_SUCCEEDED","output":{"responsesFile":"files/fresh-out"}},` +
		`"response":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput","responsesFile":"files/fresh-out"}}`,
	// A documented responsesFile whose owner the gateway already knows (in the store, in the
	// pending records, or only in an expired row).
	"/v1beta/batches/known": `{"name":"batches/known","done":true,"metadata":{"output":{"responsesFile":"files/known-out"}},"response":{"responsesFile":"files/known-out"}}`,
	"/v1beta/batches/pend":  `{"name":"batches/pend","done":true,"response":{"responsesFile":"files/pend-out"}}`,
	"/v1beta/batches/stale": `{"name":"batches/stale","done":true,"response":{"responsesFile":"files/stale-out"}}`,
	// A finished video whose documented URI names a file already owned elsewhere.
	"/v1beta/models/veo-3.0-generate-001/operations/vop": `{"name":"models/veo-3.0-generate-001/operations/vop","done":true,"response":{` +
		`"generateVideoResponse":{"generatedSamples":[{"video":{"uri":"https://generativelanguage.googleapis.com/v1beta/files/known-vid:download?alt=media"}}]}}}`,
}

// Polling a batch or operation records only the files its documented fields name
// (responsesFile, a video's URI), and never rebinds a file whose owner is known: a model's
// output, or a client's metadata echoed in the answer, cannot steal another key's file.
func TestProxyPolledFilesOnlyDocumentedAndNeverRebound(t *testing.T) {
	fake := fakegemini.New()
	srv := httptest.NewServer(cannedPolls{fake, polledAnswers})
	t.Cleanup(srv.Close)
	e := newProxyEnv(t, 3, func(a *Config) { a.Upstream = srv.URL; sharedAccess(a) })
	ctx := context.Background()
	other, poller := e.ids[e.keys[0]], e.ids[e.keys[1]]
	now := time.Now()
	exp := now.Add(time.Hour)
	rows := []store.Resource{
		{Name: "files/abc123", KeyID: other, ExpiresAt: exp},
		{Name: "files/known-out", KeyID: other, ExpiresAt: exp},
		{Name: "files/known-vid", KeyID: other, ExpiresAt: exp},
		{Name: "files/stale-out", KeyID: other, CreatedAt: now.Add(-72 * time.Hour), ExpiresAt: now.Add(-time.Hour)},
	}
	for p := range polledAnswers {
		if n := resourceName(p); n != "" {
			rows = append(rows, store.Resource{Name: n, KeyID: poller, ExpiresAt: exp})
		}
	}
	if err := e.core.store.AddResources(ctx, rows...); err != nil {
		t.Fatal(err)
	}
	// An owner the store could not take yet is known too.
	e.core.pending.mu.Lock()
	e.core.pending.rows = map[string]store.Resource{"files/pend-out": {Name: "files/pend-out", Kind: "files", KeyID: other, CreatedAt: now, ExpiresAt: exp}}
	e.core.pending.mu.Unlock()

	for p := range polledAnswers {
		n := len(fake.Calls())
		if resp, b := e.do("GET", p, ""); resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %.300s", p, resp.StatusCode, b)
		}
		if keys := e.keysSince(n); len(keys) != 0 {
			t.Fatalf("GET %s reached the fake", p)
		}
	}

	files := []string{"files/abc123", "files/modelsaid", "files/fresh-out", "files/known-out", "files/known-vid", "files/pend-out", "files/stale-out"}
	owners, err := e.core.store.ResourceOwners(ctx, files, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{
		"files/abc123":    other,  // named only by model output and client metadata
		"files/fresh-out": poller, // a documented responsesFile of a new file
		"files/known-out": other,  // documented, but its owner was known
		"files/known-vid": other,
		"files/stale-out": poller, // the known row had expired: the name is free again
	}
	for _, f := range files {
		if owners[f].KeyID != want[f] {
			t.Errorf("%s owned by key %d, want %d (0: not recorded); poller %d, other %d", f, owners[f].KeyID, want[f], poller, other)
		}
	}
	e.core.pending.owners([]string{"files/pend-out"}, time.Now(), owners)
	if owners["files/pend-out"].KeyID != other {
		t.Errorf("files/pend-out, pending for key %d, now owned by %d", other, owners["files/pend-out"].KeyID)
	}
}

// polledFiles reads the documented fields of Google's answers only.
func TestPolledFilesShapes(t *testing.T) {
	now := time.Now()
	cases := []struct {
		body string
		want []string
	}{
		{`{"response":{"responsesFile":"files/a"}}`, []string{"files/a"}},
		{`{"metadata":{"output":{"responsesFile":"files/b"}}}`, []string{"files/b"}},
		{`{"dest":{"fileName":"files/c"},"output":{"responsesFile":"files/d"}}`, []string{"files/c", "files/d"}},
		{`{"response":{"generateVideoResponse":{"generatedSamples":[{"video":{"uri":"https://generativelanguage.googleapis.com/v1beta/files/v1:download?alt=media"}},{"video":{"uri":"files/v2"}}]}}}`, []string{"files/v1", "files/v2"}},
		{`{"response":{"generatedVideos":[{"video":{"uri":"https://generativelanguage.googleapis.com/v1beta/files/v3:download?alt=media"}}]}}`, []string{"files/v3"}},
		// Duplicates once; not a file; a sub-path; wrong types elsewhere leave the rest readable.
		{`{"metadata":{"output":{"responsesFile":"files/e"}},"response":{"responsesFile":"files/e"}}`, []string{"files/e"}},
		{`{"response":{"responsesFile":"cachedContents/x"}}`, nil},
		{`{"response":{"responsesFile":"files/x/y"}}`, nil},
		{`{"done":"yes","response":{"responsesFile":"files/f","generateVideoResponse":7}}`, []string{"files/f"}},
		// Generated content and metadata are not read.
		{`{"response":{"inlinedResponses":{"inlinedResponses":[{"response":{"candidates":[{"content":{"parts":[{"fileData":{"fileUri":"files/g"}}]}}]},"metadata":{"f":"files/h"}}]}}}`, nil},
		{`{"response":{"responsesFile":"files/i"`, nil},
		{`[]`, nil},
	}
	for _, c := range cases {
		rs := polledFiles([]byte(c.body), store.Owner{KeyID: 7}, now)
		var got []string
		for _, r := range rs {
			got = append(got, r.Name)
			if r.KeyID != 7 || r.Kind != "files" || !r.ExpiresAt.After(now) {
				t.Errorf("%s: record %+v", c.body, r)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: got %v, want %v", c.body, got, c.want)
		}
	}
}
