package gateway

// Isolation of access keys: every resource the gateway records also records the access key
// that created it, and an access key sees and uses only its own. Resources the gateway did not
// create (made outside it, or recorded before resources carried their access key) are seen
// only by access keys whose policy is `shared`. A refusal reads as Google's own answer for a
// resource of another project, and nothing goes upstream.

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// mayUse tells whether the exchange's access key may see and use a resource whose record is o
// (found false: the gateway has none).
func (x *exchange) mayUse(o store.Owner, found bool) bool {
	if found && o.AccessKeyID != 0 {
		return o.AccessKeyID == x.access
	}
	return x.key != nil && x.key.policy.Shared
}

// recordOf returns the record that decides who owns name: its own, or for an operation of a
// resource ("tunedModels/x/operations/y") the resource's.
func recordOf(name string, owners map[string]store.Owner) (store.Owner, bool) {
	for _, n := range ownerNames(name) {
		if o, ok := owners[n]; ok {
			return o, true
		}
	}
	return store.Owner{}, false
}

// denyResource answers a request naming a resource its access key may not use as Google
// answers one naming a resource of another project.
func (x *exchange) denyResource(name string) {
	kind, id, _ := strings.Cut(name, "/")
	switch {
	case kind == "files":
		x.fail(http.StatusForbidden, "PERMISSION_DENIED", "You do not have permission to access the File "+id+" or it may not exist.")
	case kind == "cachedContents":
		x.fail(http.StatusForbidden, "PERMISSION_DENIED", "CachedContent not found (or permission denied)")
	case kind == "batches":
		x.fail(http.StatusForbidden, "PERMISSION_DENIED", "You do not have permission to access the Batch "+name+" or it may not exist.")
	default:
		x.fail(http.StatusNotFound, "NOT_FOUND", "Requested entity was not found.")
	}
}

// listedKinds are the collections proxied to one key whose listing is filtered down to what
// the access key may see, by the member of the answer that holds the items (batches.list
// answers long-running operations). The others are merged over every key and filtered as they
// go (mergedlists.go).
var listedKinds = map[string]string{"batches": "operations", "operations": "operations"}

// listedCollection returns the member of a listing's answer that holds its items, when the
// request lists a collection of key-bound resources ("/v1beta/cachedContents",
// "/v1beta/openai/files"), else "".
func listedCollection(method, p string) string {
	if method != http.MethodGet {
		return ""
	}
	s := exactName(p)
	if rest, ok := strings.CutPrefix(s, "openai/"); ok {
		if rest == "files" || rest == "batches" {
			return "data"
		}
		return ""
	}
	return listedKinds[s]
}

// listedMax is the largest listing read whole to filter it; Google's pages are far smaller.
const listedMax = 16 << 20

// copyFilteredList sends a successful listing with only the items the access key may see (or,
// for models.list, use).
func (x *exchange) copyFilteredList(resp *http.Response, secret string) {
	b, err := io.ReadAll(io.LimitReader(resp.Body, listedMax+1))
	resp.Body.Close()
	if err != nil || len(b) > listedMax {
		x.fail(http.StatusBadGateway, "UNAVAILABLE", "The upstream's listing could not be read whole to filter it.")
		return
	}
	b = maskSecret(b, secret)
	var out []byte
	if x.modelsList {
		out, err = x.filterModels(b)
	} else {
		out, err = x.filterListing(b, x.listMember)
	}
	if err != nil {
		x.fail(http.StatusBadGateway, "UNAVAILABLE", "The upstream's listing could not be read to filter it.")
		return
	}
	x.ttfb = time.Since(x.start)
	x.writeRaw(resp, out, secret, "")
}

// filterListing keeps, in the array member of the JSON object b, the items whose "name" (or
// OpenAI "id") names a resource the access key may use.
func (x *exchange) filterListing(b []byte, member string) ([]byte, error) {
	return filterList(b, member, func(items []listItem) ([]bool, error) {
		names := make([]string, len(items))
		for i, it := range items {
			if names[i] = resourceName(it.Name); names[i] == "" {
				names[i] = resourceName(it.ID)
			}
		}
		visible, err := x.visible(names)
		if err != nil {
			return nil, err
		}
		keep := make([]bool, len(items))
		for i, n := range names {
			keep[i] = n != "" && visible[n]
		}
		return keep, nil
	})
}

// listItem is what filtering a listing reads of each item.
type listItem struct {
	Name string `json:"name"`
	ID   string `json:"id"` // the OpenAI-compatible listings'
}

// filterList keeps, in the array member of the JSON object b, the items keep says to keep.
// Every other member stays as it was; an emptied list is left out, as Google leaves it.
func filterList(b []byte, member string, keep func([]listItem) ([]bool, error)) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		return nil, err
	}
	raw, ok := obj[member]
	if !ok {
		return b, nil // an empty page
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, err
	}
	meta := make([]listItem, len(items))
	for i, it := range items {
		_ = json.Unmarshal(it, &meta[i])
	}
	ok2, err := keep(meta)
	if err != nil {
		return nil, err
	}
	kept := items[:0]
	for i, it := range items {
		if ok2[i] {
			kept = append(kept, it)
		}
	}
	if len(kept) == 0 && member != "data" {
		delete(obj, member)
	} else {
		obj[member], _ = json.Marshal(kept)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(obj); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// visible tells which of names (resource names; "" entries are skipped) the access key may see.
func (x *exchange) visible(names []string) (map[string]bool, error) {
	var lookup []string
	for _, n := range names {
		if n != "" {
			lookup = append(lookup, ownerNames(n)...)
		}
	}
	out := make(map[string]bool, len(names))
	if len(lookup) == 0 {
		return out, nil
	}
	now := time.Now()
	owners, err := x.core.store.ResourceOwners(x.r.Context(), lookup, now)
	if err != nil {
		return nil, err
	}
	x.core.pending.owners(lookup, now, owners)
	for _, n := range names {
		if n != "" {
			o, found := recordOf(n, owners)
			out[n] = x.mayUse(o, found)
		}
	}
	return out, nil
}
