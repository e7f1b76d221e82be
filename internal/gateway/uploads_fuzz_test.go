package gateway

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzUploadSessionID checks the upload id read from a request (uploadSessionID):
//   - only a path under /upload/ has one;
//   - it is the first upload_id of the query as net/url reads it, the way the gateway reads
//     the upload URL it stored;
//   - an id put into a query, in front of any other parameters, comes back unchanged, and so
//     does the upload_id of every upload URL the fake upstream answers.
func FuzzUploadSessionID(f *testing.F) {
	_, urls := fakeAnswers()
	for _, u := range urls {
		if pu, err := url.Parse(u); err == nil {
			f.Add(pu.Path, pu.RawQuery, "AHxI1nPq-3vPmn9kDQn5Ph2Yk0xWmL0a")
		}
	}
	f.Add("/upload/v1beta/files", "upload_id=ABC&upload_protocol=resumable", "x y&z=1;%")
	f.Add("/upload/v1beta/fileSearchStores/s:uploadToFileSearchStore", "upload_protocol=resumable&upload_id=a%2Bb", "")
	f.Add("/v1beta/files", "upload_id=ABC", "ABC")
	f.Add("/upload/v1beta/files", "upload_id=A;B&upload_id=C", "\x00")
	f.Add("/upload/v1beta/files", "upload%5Fid=hidden", "id")
	f.Fuzz(func(t *testing.T, p, rawQuery, id string) {
		got := uploadSessionID(p, rawQuery)
		if !strings.HasPrefix(p, "/upload/") && got != "" {
			t.Fatalf("%q?%q is no upload, yet has id %q", p, rawQuery, got)
		}
		if got != "" {
			q, _ := url.ParseQuery(rawQuery)
			if ids := q["upload_id"]; len(ids) == 0 || ids[0] != got {
				t.Fatalf("%q?%q: id %q, net/url reads %q", p, rawQuery, got, ids)
			}
		}
		if id == "" {
			return
		}
		for _, q := range []string{
			"upload_id=" + url.QueryEscape(id),
			"upload_id=" + url.QueryEscape(id) + "&upload_protocol=resumable",
			"upload_id=" + url.QueryEscape(id) + "&" + rawQuery,
		} {
			if got := uploadSessionID("/upload/v1beta/files", q); got != id {
				t.Fatalf("query %q gives id %q, want %q", q, got, id)
			}
		}
	})
}
