package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// The abuse suite sends garbage through a real caddy over raw TCP (so that it can send what no
// HTTP client library would: NUL bytes, bad percent-encoding, malformed header lines) and
// checks every answer, caddy's memory, the pool and the request log.

const (
	abuseRequests    = 10000
	abuseConcurrency = 12
	// abuseBudget bounds the run: on a loaded machine it stops early (and says so) rather than
	// hold up the suite. 10k requests take a few seconds on loopback.
	abuseBudget = 30 * time.Second
	// abuseIOTimeout bounds one request's exchange on its connection.
	abuseIOTimeout = 20 * time.Second
	// abuseRSSGrowth is the most caddy's peak RSS may grow during the run: generous, since a
	// leak of even a few hundred bytes per request, or one buffered garbage body per request,
	// would show as far more.
	abuseRSSGrowth = 64 << 20
	abuseRSSClimb  = 16 << 20     // the most RSS may climb from the first quarter of the run to the last
	abuseMarker    = "X-Abuse-Id" // a header naming the request, to find it upstream
)

// abuseReq is one request as raw HTTP/1.x.
type abuseReq struct {
	id      int
	method  string
	target  string
	proto   string
	headers []string // raw header lines after Host, without CRLF
	noHost  bool     // the variant writes its own Host lines
	body    []byte
	// authed: the request carries the valid access key as its only (or first) credential, so
	// the gateway lets it through to the upstream.
	authed bool
	// upload: an upload chunk with a made-up session id and no valid access key.
	upload bool
	// close: framing the server may not read the same way we wrote it; the connection is not
	// reused after it.
	close bool
	// refusable: Go's HTTP server may refuse the request before caddy sees it (it cannot parse
	// it); no other request may be refused so.
	refusable bool
	kinds     []string // variant names, for the report
}

func (a *abuseReq) kind(k string) { a.kinds = append(a.kinds, k) }

// wire returns the request as written on the connection: its head, then its body (shared by
// the requests that send the same big body, not copied).
func (a *abuseReq) wire(host string) net.Buffers {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s %s\r\n", a.method, a.target, a.proto)
	if !a.noHost {
		fmt.Fprintf(&b, "Host: %s\r\n", host)
	}
	for _, h := range a.headers {
		b.WriteString(h)
		b.WriteString("\r\n")
	}
	if a.close {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	return net.Buffers{b.Bytes(), a.body}
}

// printable returns n random printable ASCII characters (no space). Beyond 4 KiB a random 4 KiB
// repeats: cheap enough to build megabytes of it under -race.
func printable(r *rand.Rand, n int) string {
	b := make([]byte, min(n, 4<<10))
	for i := range b {
		b[i] = byte(0x21 + r.IntN(0x7e-0x21+1))
	}
	if n > len(b) {
		b = bytes.Repeat(b, n/len(b)+1)[:n]
	}
	return string(b)
}

// invalidUTF8 returns n bytes mixing ASCII letters and bytes 0x80-0xff that do not form UTF-8.
func invalidUTF8(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		if i%3 == 0 {
			b[i] = byte('a' + r.IntN(26))
		} else {
			b[i] = byte(0x80 + r.IntN(0x40)) // continuation bytes with no lead byte
		}
	}
	return string(b)
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	return b
}

// pick returns an index in [0, len(weights)) with the given relative weights.
func pick(r *rand.Rand, weights ...int) int {
	total := 0
	for _, w := range weights {
		total += w
	}
	n := r.IntN(total)
	for i, w := range weights {
		if n < w {
			return i
		}
		n -= w
	}
	return len(weights) - 1
}

// nested returns depth levels of nested JSON objects around a generate body.
func nested(depth int) []byte {
	return []byte(strings.Repeat(`{"contents":`, depth) + `[]` + strings.Repeat(`}`, depth))
}

// abuseBodies are the big request parts, built once and shared by the requests that send them
// (cheaper under -race), and the host the requests name.
type abuseBodies struct {
	mib, nestedObj, nestedArr, badUTF8 []byte
	value64k                           string   // a 64 KiB header value
	huge                               []string // header lines over 1 MiB in all
	paths64k                           []string // 64 KiB paths
	host                               string
}

func newAbuseBodies(r *rand.Rand, host string) *abuseBodies {
	big := bytes.Repeat([]byte("a"), 1<<20)
	var huge, paths []string
	for range 9 {
		huge = append(huge, "X-Junk: "+printable(r, 120<<10))
	}
	for _, seg := range []string{"a", "../", "%2e%2e/", "%ff"} {
		paths = append(paths, "/v1beta/models/"+strings.Repeat(seg, (64<<10)/len(seg)))
	}
	return &abuseBodies{
		value64k:  printable(r, 64<<10),
		huge:      huge,
		paths64k:  paths,
		host:      host,
		mib:       append(append([]byte(`"`), big...), '"'), // a 1 MiB single JSON string
		nestedObj: nested(100),
		nestedArr: []byte(`{"contents":[{"parts":[{"text":"hi"}],"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}]}`),
		badUTF8:   []byte("{\"contents\":[{\"parts\":[{\"text\":\"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\"}]}]}"),
	}
}

// newAbuseReq builds request id from r: a credential, a method, a path, extra headers and a
// body, each drawn from the variants below.
func newAbuseReq(r *rand.Rand, id int, bodies *abuseBodies) *abuseReq {
	a := &abuseReq{id: id, method: http.MethodPost, proto: "HTTP/1.1"}
	var query []string

	// The credential. About one request in eight is authenticated.
	switch pick(r, 10, 12, 8, 8, 8, 3, 2, 6, 5, 3, 3, 2, 2, 3, 3) {
	case 0:
		a.kind("key:none")
	case 1:
		a.kind("key:garbage")
		a.headers = append(a.headers, "X-Goog-Api-Key: "+printable(r, 1+r.IntN(200)))
	case 2:
		a.kind("key:invalid-utf8")
		a.headers = append(a.headers, "X-Goog-Api-Key: "+invalidUTF8(r, 1+r.IntN(64)))
	case 3:
		a.kind("key:query-garbage")
		query = append(query, "key="+url.QueryEscape(string(randomBytes(r, 1+r.IntN(64)))))
	case 4:
		a.kind("key:bearer-garbage")
		a.headers = append(a.headers, "Authorization: Bearer "+printable(r, 1+r.IntN(100)))
	case 5:
		a.kind("key:basic")
		a.headers = append(a.headers, "Authorization: Basic "+printable(r, 20))
	case 6:
		a.kind("key:8KiB")
		a.headers = append(a.headers, "X-Goog-Api-Key: "+printable(r, 8<<10))
	case 7:
		a.kind("key:near-miss")
		near := []string{accessKey[:len(accessKey)-1], accessKey + "x", strings.ToUpper(accessKey), wrongKey,
			accessKey[:len(accessKey)-1] + "\xff", " " + accessKey2}
		a.headers = append(a.headers, "X-Goog-Api-Key: "+near[r.IntN(len(near))])
	case 8:
		a.kind("key:valid-header")
		a.authed = true
		a.headers = append(a.headers, "X-Goog-Api-Key: "+accessKey)
	case 9:
		a.kind("key:valid-query")
		a.authed = true
		query = append(query, "key="+accessKey)
	case 10:
		a.kind("key:valid-bearer")
		a.authed = true
		a.headers = append(a.headers, "Authorization: Bearer "+accessKey)
	case 11:
		a.kind("key:valid-then-garbage")
		a.authed = true // the first x-goog-api-key counts
		a.headers = append(a.headers, "X-Goog-Api-Key: "+accessKey, "X-Goog-Api-Key: "+printable(r, 30))
	case 12:
		a.kind("key:garbage-then-valid")
		a.headers = append(a.headers, "X-Goog-Api-Key: "+printable(r, 30), "X-Goog-Api-Key: "+accessKey)
	case 13:
		a.kind("key:empty-header")
		a.headers = append(a.headers, "X-Goog-Api-Key: ")
	case 14:
		a.kind("key:garbage-header-valid-query") // the header wins
		a.headers = append(a.headers, "X-Goog-Api-Key: "+printable(r, 30))
		query = append(query, "key="+accessKey)
	}

	// The method.
	switch pick(r, 70, 10, 5, 5, 5, 3, 2) {
	case 0:
	case 1:
		a.method = http.MethodGet
	case 2:
		a.method = http.MethodPut
	case 3:
		a.method = http.MethodDelete
	case 4:
		a.method = http.MethodPatch
	case 5:
		a.method = "FOO"
	case 6:
		a.method = "post"
	}

	// The path.
	gen := "/v1beta/models/" + modelFlash + ":generateContent"
	p := gen
	switch pick(r, 25, 6, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 3, 4, 2) {
	case 0:
		a.kind("path:generate")
	case 1:
		a.kind("path:stream")
		p = "/v1beta/models/" + modelFlash + ":streamGenerateContent"
		query = append(query, "alt=sse")
	case 2:
		a.kind("path:random-model")
		p = "/v1beta/models/" + url.PathEscape(printable(r, 1+r.IntN(40))) + ":generateContent"
	case 3:
		a.kind("path:dotdot")
		p = []string{"/v1beta/../admin/api/keys", "/v1beta/models/../../../etc/passwd", "/v1beta/models/../files",
			"/v1/../v1beta/models/" + modelFlash + ":generateContent", "/upload/../v1beta/models"}[r.IntN(5)]
	case 4:
		a.kind("path:pct-dotdot")
		p = []string{"/v1beta/%2e%2e/%2e%2e/etc/passwd", "/v1beta/models/%2E%2E/%2e%2e/admin/api/keys",
			"/v1beta/%2e%2e%2f%2e%2e%2fadmin", "/v1beta/models/%252e%252e/x"}[r.IntN(4)]
	case 5:
		a.kind("path:double-slash")
		p = []string{"//evil.example.com/v1beta/models", "/v1beta//evil.example.com/x", "/v1beta/models//" + modelFlash + ":generateContent",
			"//v1beta/models/" + modelFlash + ":generateContent"}[r.IntN(4)]
	case 6:
		a.kind("path:backslash")
		p = []string{`/v1beta\..\..\admin`, `/v1beta/models\` + modelFlash + `:generateContent`, `/v1beta/%5c..%5c..%5cadmin`,
			`/v1beta/models/..\..\etc`}[r.IntN(4)]
	case 7:
		a.kind("path:64KiB")
		p = bodies.paths64k[r.IntN(len(bodies.paths64k))]
	case 8:
		a.kind("path:nul")
		p = []string{"/v1beta/models/" + modelFlash + "%00:generateContent", "/v1beta/%00/../admin", "/v1beta/models%00"}[r.IntN(3)]
	case 9:
		a.kind("path:bad-percent")
		a.refusable = true
		p = []string{"/v1beta/models/%zz:generateContent", "/v1beta/%", "/v1beta/models/%e", "/v1beta/%G0"}[r.IntN(4)]
	case 10:
		a.kind("path:pct-invalid-utf8")
		p = "/v1beta/models/%ff%fe%c3%28:generateContent"
	case 11:
		a.kind("path:raw-invalid-utf8")
		p = "/v1beta/models/\xff\xfe" + modelFlash + ":generateContent"
	case 12:
		a.kind("path:openai")
		p = "/v1beta/openai/chat/completions"
	case 13:
		a.kind("path:upload-id")
		p = "/upload/v1beta/files"
		query = append(query, "upload_id="+url.QueryEscape(printable(r, 1+r.IntN(80))), "upload_protocol=resumable")
		if a.authed {
			// An upload chunk's session id is its credential: keep these unauthenticated, so that
			// the expected number of request-log rows does not depend on how the gateway logs
			// chunks of a session it does not know.
			a.headers = slices.DeleteFunc(a.headers, func(h string) bool {
				return strings.HasPrefix(h, "X-Goog-Api-Key") || strings.HasPrefix(h, "Authorization")
			})
			query = slices.DeleteFunc(query, func(q string) bool { return strings.HasPrefix(q, "key=") })
			a.authed = false
			a.kinds[0] = "key:none"
		}
		a.upload = true
	case 14:
		a.kind("path:bad-query")
		query = append(query, []string{"%zz=1", "alt=sse&alt=json", "key", "=&&==&", "alt=%00", "\xff=\xfe"}[r.IntN(6)])
	case 15:
		a.kind("path:not-api")
		p = []string{"/", "/etc/passwd", "/v2/models", "/v1betax/models", "/uploadx"}[r.IntN(5)]
	case 16:
		a.kind("path:files")
		p = []string{"/v1beta/files/" + url.PathEscape(printable(r, 12)), "/v1beta/cachedContents/x", "/v1beta/batches/" + url.PathEscape(printable(r, 8))}[r.IntN(3)]
	case 17:
		a.kind("path:absolute-form")
		p = "http://" + bodies.host + "/v1beta/models/" + modelFlash + ":generateContent"
	case 18:
		a.kind("path:raw-nul")
		a.refusable = true
		p = "/v1beta/models/\x00:generateContent"
		a.close = true
	case 19:
		a.kind("path:raw-space-ctl")
		a.refusable = true
		p = []string{"/v1beta/models/a b:generateContent", "/v1beta/\x01", "/v1beta/\x7f"}[r.IntN(3)]
		a.close = true
	case 20:
		a.kind("path:embed")
		p = "/v1beta/models/" + modelEmbed + ":embedContent"
	}
	a.target = p
	if len(query) > 0 {
		a.target += "?" + strings.Join(query, "&")
	}

	// Extra headers.
	switch pick(r, 45, 6, 4, 4, 5, 4, 3, 3, 3, 3, 3, 3, 3, 3, 1, 3, 2) {
	case 0:
	case 1:
		a.kind("hdr:64KiB-value")
		a.headers = append(a.headers, "X-Junk: "+bodies.value64k)
	case 2:
		a.kind("hdr:500-headers")
		for i := range 500 {
			a.headers = append(a.headers, fmt.Sprintf("X-Junk-%d: %s", i, printable(r, 20)))
		}
	case 3:
		a.kind("hdr:duplicated")
		a.headers = append(a.headers, "Content-Type: application/json", "Content-Type: text/plain",
			"X-Goog-Api-Client: a", "X-Goog-Api-Client: b", "Accept: */*", "Accept: text/event-stream")
	case 4:
		a.kind("hdr:invalid-utf8")
		a.headers = append(a.headers, "User-Agent: "+invalidUTF8(r, 40), "X-Goog-Api-Client: "+invalidUTF8(r, 40),
			"Content-Type: application/json; charset=\xff\xfe")
	case 5:
		a.kind("hdr:client-ip-spoof")
		a.headers = append(a.headers, "X-Forwarded-For: "+printable(r, 30), "Forwarded: for="+printable(r, 10),
			"CF-Connecting-IP: 1.2.3.4", "X-Real-IP: ::1", "X-Forwarded-Host: evil.example.com", "X-Forwarded-Proto: gopher")
	case 6:
		a.kind("hdr:control-char") // refused by Go's server: not a valid field value
		a.refusable = true
		a.headers = append(a.headers, "X-Junk: a\x01b")
		a.close = true
	case 7:
		a.kind("hdr:no-colon") // refused: malformed header line
		a.refusable = true
		a.headers = append(a.headers, "X-Junk "+printable(r, 10))
		a.close = true
	case 8:
		a.kind("hdr:bad-name") // refused: invalid header name
		a.refusable = true
		a.headers = append(a.headers, "X J\xffunk: 1")
		a.close = true
	case 9:
		a.kind("hdr:expect-continue")
		a.headers = append(a.headers, "Expect: 100-continue")
	case 10:
		a.kind("hdr:expect-garbage") // 417 from Go's server
		a.refusable = true
		a.headers = append(a.headers, "Expect: "+printable(r, 10))
		a.close = true
	case 11:
		a.kind("hdr:content-encoding")
		a.headers = append(a.headers, "Content-Encoding: gzip")
	case 12:
		a.kind("hdr:hop-by-hop")
		a.headers = append(a.headers, "Connection: X-Goog-Api-Key, TE", "TE: trailers", "Upgrade: websocket", "Proxy-Authorization: x")
	case 13:
		a.kind("hdr:bad-version")
		a.proto = []string{"HTTP/1.0", "HTTP/9.9", "HTTP/1.1x", "HTTP/0.9"}[r.IntN(4)]
		a.close = true
		if a.proto != "HTTP/1.0" {
			a.refusable = true
		}
	case 14:
		a.kind("hdr:over-1MiB") // 431 from Go's server, over the test's max_header_size
		a.refusable = true
		a.headers = append(a.headers, bodies.huge...)
		a.close = true
	case 15:
		a.kind("hdr:two-hosts") // refused
		a.refusable = true
		a.noHost = true
		a.headers = append(a.headers, "Host: "+bodies.host, "Host: evil.example.com")
		a.close = true
	case 16:
		a.kind("hdr:origin")
		a.headers = append(a.headers, "Origin: https://evil.example.com", "Sec-Fetch-Site: cross-site")
	}

	// The body, framed by Content-Length unless chunked.
	var body []byte
	chunked, badFraming := false, false
	switch pick(r, 30, 10, 6, 6, 3, 8, 8, 6, 5, 3, 3, 2, 2) {
	case 0:
		a.kind("body:generate")
		body = []byte(genBody)
	case 1:
		a.kind("body:none")
	case 2:
		a.kind("body:invalid-utf8")
		body = bodies.badUTF8
	case 3:
		a.kind("body:nested-100")
		if r.IntN(2) == 0 {
			body = bodies.nestedObj
		} else {
			body = bodies.nestedArr
		}
	case 4:
		a.kind("body:1MiB-string")
		body = bodies.mib
	case 5:
		a.kind("body:truncated")
		body = []byte(genBody[:r.IntN(len(genBody))])
	case 6:
		a.kind("body:random-bytes")
		body = randomBytes(r, r.IntN(4<<10))
	case 7:
		a.kind("body:chunked")
		body = []byte(genBody)
		chunked = true
	case 8:
		a.kind("body:chunked-malformed")
		chunked, badFraming = true, true
	case 9:
		a.kind("body:declared-100MiB") // declared, never sent: the gateway answers without waiting
		a.headers = append(a.headers, "Content-Length: 104857600")
		a.close = true
	case 10:
		a.kind("body:content-length-garbage") // refused
		a.refusable = true
		a.headers = append(a.headers, "Content-Length: "+[]string{"-1", "abc", "1, 2", "0x10"}[r.IntN(4)])
		a.close = true
	case 11:
		a.kind("body:cl-and-te") // refused: both framings
		a.refusable = true
		a.headers = append(a.headers, "Content-Length: 5", "Transfer-Encoding: chunked")
		body = []byte("0\r\n\r\n")
		a.close = true
	case 12:
		a.kind("body:te-garbage") // 501 from Go's server
		a.refusable = true
		a.headers = append(a.headers, "Transfer-Encoding: "+printable(r, 8))
		a.close = true
	}
	switch {
	case badFraming:
		a.headers = append(a.headers, "Transfer-Encoding: chunked")
		a.body = []byte([]string{"zz\r\nabc\r\n0\r\n\r\n", "5\r\nabc\r\n0\r\n\r\n", "ffffffffffffffffff\r\n"}[r.IntN(3)])
		a.close = true
	case chunked:
		a.headers = append(a.headers, "Transfer-Encoding: chunked")
		var b bytes.Buffer
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 1+r.IntN(16))
			fmt.Fprintf(&b, "%x\r\n%s\r\n", n, rest[:n])
			rest = rest[n:]
		}
		b.WriteString("0\r\n\r\n")
		a.body = b.Bytes()
	case body != nil:
		a.headers = append(a.headers, "Content-Type: application/json", "Content-Length: "+strconv.Itoa(len(body)))
		a.body = body
	}
	a.headers = append(a.headers, abuseMarker+": "+a.marker())
	return a
}

// marker names the request in the upstream's records: "a<id>" when authenticated, "u<id>" when not.
func (a *abuseReq) marker() string {
	if a.authed {
		return "a" + strconv.Itoa(a.id)
	}
	return "u" + strconv.Itoa(a.id)
}

// rawConn is one client connection that sends raw requests and reads the answers, opening a
// new connection when the server closed the last one.
type rawConn struct {
	addr string
	c    net.Conn
	br   *bufio.Reader
}

func (rc *rawConn) close() {
	if rc.c != nil {
		rc.c.Close()
		rc.c = nil
	}
}

// do sends one request and reads its final answer (skipping 1xx), with its body up to 8 MiB.
func (rc *rawConn) do(a *abuseReq, wire net.Buffers) (*http.Response, []byte, error) {
	for try := 0; ; try++ {
		fresh := rc.c == nil
		if fresh {
			c, err := net.DialTimeout("tcp", rc.addr, 5*time.Second)
			if err != nil {
				return nil, nil, err
			}
			rc.c, rc.br = c, bufio.NewReaderSize(c, 64<<10)
		}
		resp, body, gotBytes, err := rc.exchange(a, wire)
		if err != nil && !gotBytes && !fresh && try == 0 {
			// A kept-alive connection the server had closed: once more on a new one.
			rc.close()
			continue
		}
		if err != nil || resp.Close || a.close {
			rc.close()
		}
		return resp, body, err
	}
}

func (rc *rawConn) exchange(a *abuseReq, wire net.Buffers) (resp *http.Response, body []byte, gotBytes bool, err error) {
	c := rc.c
	_ = c.SetDeadline(time.Now().Add(abuseIOTimeout))
	// Written while the answer is read: the server may answer (and close) before it reads a
	// big body.
	written := make(chan error, 1)
	go func() {
		bufs := append(net.Buffers(nil), wire...) // WriteTo consumes its buffers
		_, err := bufs.WriteTo(c)
		written <- err
	}()
	defer func() {
		select {
		case werr := <-written:
			if werr != nil && err == nil {
				rc.close() // the request did not go out whole: the connection is unusable
			}
		case <-time.After(2 * time.Second):
			rc.close() // the server stopped reading; closing unblocks the writer
			<-written
		}
	}()
	method := a.method
	if !isToken(method) {
		method = http.MethodGet
	}
	for {
		if _, perr := rc.br.Peek(1); perr != nil {
			return nil, nil, gotBytes, perr
		}
		gotBytes = true
		resp, err = http.ReadResponse(rc.br, &http.Request{Method: strings.ToUpper(method)})
		if err != nil {
			return nil, nil, true, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		resp.Body.Close()
	}
	body, err = io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	resp.Body.Close()
	return resp, body, true, err
}

func isToken(s string) bool {
	for _, c := range s {
		if c < '!' || c > '~' {
			return false
		}
	}
	return s != ""
}

// Answer classes.
const (
	classEnvelope = "gateway error envelope"
	classUpstream = "upstream answer (authenticated)"
	classRefused  = "refused by Go's HTTP server before any handler"
	classFallback = "site's 404 for a path outside the API"
	classLost     = "refused by Go's HTTP server, its answer lost to the connection's reset"
	classIOError  = "no answer (connection error)"
	classBad      = "UNEXPECTED"
)

// apiPathOf mirrors what the gateway serves: the request target as Go's server parses it, its
// path cleaned, under one of the API prefixes.
func apiPathOf(target string) (string, bool) {
	u, err := url.ParseRequestURI(target) // also the absolute form, http://host/path
	if err != nil || !strings.HasPrefix(u.Path, "/") {
		return "", false
	}
	clean := path.Clean(u.Path)
	for _, pre := range []string{"/v1/", "/v1beta/", "/v1alpha/", "/upload/"} {
		if strings.HasPrefix(clean, pre) {
			return clean, true
		}
	}
	return "", false
}

// classify says what an answer is, and why it is wrong when it is.
func classify(a *abuseReq, resp *http.Response, body []byte, err error) (class, why string) {
	if resp == nil {
		// Go's server closes the connection at once after refusing a request, with the rest
		// of the request unread, so the kernel may reset the connection before the client
		// has read the refusal.
		if a.refusable {
			return classLost, ""
		}
		return classIOError, err.Error()
	}
	server := resp.Header.Get("Server")
	ct := resp.Header.Get("Content-Type")
	if server == "" {
		// Go's net/http answers a request it cannot parse itself, before caddy sees it: 400,
		// 431, 501 or 505 in text/plain, closing the connection; or an empty 417 for an
		// Expect it does not know. The body may be cut by the reset above.
		if a.refusable && (resp.StatusCode == http.StatusExpectationFailed ||
			slices.Contains([]int{400, 431, 501, 505}, resp.StatusCode) && strings.HasPrefix(ct, "text/plain") && resp.Close) {
			return classRefused, ""
		}
		return classBad, "no Server header but not Go's own refusal of a request it cannot parse"
	}
	if err != nil {
		return classIOError, "reading caddy's answer: " + err.Error()
	}
	if _, api := apiPathOf(a.target); !api {
		if resp.StatusCode == http.StatusNotFound && string(body) == "Not found" {
			return classFallback, ""
		}
		return classBad, "a path outside the API did not reach the site's 404"
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		return classBad, "an API answer without X-Content-Type-Options: nosniff"
	}
	if a.authed {
		// The upstream's own formats: the envelope (also as text/event-stream on alt=sse), an
		// array of one envelope on the OpenAI-compatible paths, or a success.
		var arr []json.RawMessage
		if isEnvelope(body, resp.StatusCode) ||
			json.Unmarshal(body, &arr) == nil && len(arr) == 1 && isEnvelope(arr[0], resp.StatusCode) ||
			resp.StatusCode/100 == 2 && (strings.HasPrefix(ct, "application/json") && json.Valid(body) || strings.HasPrefix(ct, "text/event-stream")) {
			return classUpstream, ""
		}
		return classBad, "an authenticated request got neither an upstream answer nor an error envelope"
	}
	if !strings.HasPrefix(ct, "application/json") || !isEnvelope(body, resp.StatusCode) {
		return classBad, "not a Gemini error envelope"
	}
	if resp.StatusCode < 400 {
		return classBad, "an unauthenticated request got a success status"
	}
	if a.upload {
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusUnauthorized {
			return classBad, "an unknown upload session got neither 404 nor 401"
		}
	} else if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
		return classBad, "an unauthenticated request got neither 401 nor 403"
	}
	return classEnvelope, ""
}

// queryCredential reads a raw query part by part, as a lenient server would: cred is a `key`
// or `access_token` parameter with a value, bare one without.
func queryCredential(raw string) (cred, bare bool) {
	for part := range strings.SplitSeq(raw, "&") {
		name, val, _ := strings.Cut(part, "=")
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		if name == "key" || name == "access_token" {
			if val != "" {
				cred = true
			} else if part != "" {
				bare = true
			}
		}
	}
	return cred, bare
}

// isEnvelope tells whether b is {"error":{"code","message","status"}} with the given code.
func isEnvelope(b []byte, code int) bool {
	var env envelope
	return json.Unmarshal(b, &env) == nil && env.Error.Code == code && env.Error.Message != "" && env.Error.Status != ""
}

// abuseTally collects the answers of a run.
type abuseTally struct {
	mu          sync.Mutex
	classes     map[string]int
	statuses    map[string]int // class + status
	refusedBy   map[string]int // variant kind -> refusals
	bad         []string
	badWhy      map[string]int
	authedSeen  int // authenticated requests the gateway handled (upstream answers)
	unauthSeen  int // unauthenticated requests the gateway answered itself
	unauth401   int
	uploadSeen  int
	upload404   int
	keysInReply int
}

func (t *abuseTally) add(a *abuseReq, resp *http.Response, body []byte, err error, poolKeys []string) {
	class, why := classify(a, resp, body, err)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.classes[class]++
	if resp != nil {
		t.statuses[fmt.Sprintf("%s %d", class, resp.StatusCode)]++
		var raw bytes.Buffer
		_ = resp.Header.Write(&raw)
		raw.Write(body)
		for _, k := range poolKeys {
			if bytes.Contains(raw.Bytes(), []byte(k)) {
				t.keysInReply++
			}
		}
	}
	switch class {
	case classUpstream:
		t.authedSeen++
	case classEnvelope:
		t.unauthSeen++
		if resp.StatusCode == http.StatusUnauthorized {
			t.unauth401++
		}
		if a.upload {
			t.uploadSeen++
			if resp.StatusCode == http.StatusNotFound {
				t.upload404++
			}
		}
	case classRefused, classLost:
		for _, k := range a.kinds {
			t.refusedBy[k]++
		}
	case classBad, classIOError:
		status := "-"
		if resp != nil {
			status = resp.Status + " " + resp.Header.Get("Content-Type")
		}
		if t.badWhy[why+status]++; t.badWhy[why+status] <= 3 {
			t.bad = append(t.bad, fmt.Sprintf("#%d %v %s %.120q: %s; answer %s %.200q", a.id, a.kinds, a.method, a.target, why, status, body))
		}
	}
}

// adminGET reads an admin API route with the Bearer admin key into out.
func adminGET(t *testing.T, g *gateway, route string, out any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, g.URL+"/admin/api/"+route, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /admin/api/%s: %d %v %s", route, resp.StatusCode, err, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("GET /admin/api/%s: %v: %s", route, err, b)
	}
}

// adminKeys is the part of GET /admin/api/keys the abuse tests check.
type adminKeys struct {
	Keys []struct {
		ID             int64             `json:"id"`
		Status         string            `json:"status"`
		DisabledReason string            `json:"disabled_reason"`
		FailureCount   int               `json:"failure_count"`
		LastError      string            `json:"last_error"`
		Failures       int64             `json:"failures"`
		Cooldowns      []json.RawMessage `json:"cooldowns"`
	} `json:"keys"`
	Total int `json:"total"`
}

// assertPoolUntouched checks that no pool key was penalised: all active, no failure counted,
// no cooldown.
func assertPoolUntouched(t *testing.T, g *gateway, n int) {
	t.Helper()
	var keys adminKeys
	adminGET(t, g, "keys?page_size=500", &keys)
	if keys.Total != n || len(keys.Keys) != n {
		t.Errorf("the admin API lists %d keys (total %d), want %d", len(keys.Keys), keys.Total, n)
	}
	for _, k := range keys.Keys {
		if k.Status != "active" || k.DisabledReason != "" || k.FailureCount != 0 || k.Failures != 0 || len(k.Cooldowns) != 0 || k.LastError != "" {
			t.Errorf("key #%d was penalised: status %q, reason %q, failure_count %d, failures %d, cooldowns %d, last_error %q",
				k.ID, k.Status, k.DisabledReason, k.FailureCount, k.Failures, len(k.Cooldowns), k.LastError)
		}
	}
}

// requestLogTotal returns the number of request-log rows (admin API) and the stats' request total.
func requestLogTotal(t *testing.T, g *gateway) (rows, stats int64) {
	t.Helper()
	var logs struct {
		Total int64 `json:"total"`
	}
	adminGET(t, g, "logs?kind=request&page_size=1", &logs)
	var st struct {
		Requests struct {
			Total int64 `json:"total"`
		} `json:"requests"`
	}
	adminGET(t, g, "stats?range=24h", &st)
	return logs.Total, st.Requests.Total
}

// rssSampler polls a process's RSS until stopped and keeps the highest figure.
type rssSampler struct {
	max  atomic.Int64
	once sync.Once
	stop chan struct{}
	done chan struct{}
}

func sampleRSS(pid int, every time.Duration) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			if cur := vmRSS(pid); cur > s.max.Load() {
				s.max.Store(cur)
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// Stop ends the sampling and returns the highest RSS seen.
func (s *rssSampler) Stop() int64 {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	return s.max.Load()
}

// vmRSS reads a process's resident set size from /proc (0 when it cannot).
func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// serversOption returns a gatewayConfig.Options line that ends the gemini_synapse block and opens
// caddy's global `servers` option with lines in it; the closing brace the helper writes for the
// gemini_synapse block then closes `servers`. It must be the last option.
func serversOption(lines ...string) string {
	return "}\n\tservers {\n\t\t" + strings.Join(lines, "\n\t\t")
}

// abuseSite is the public example's site: the admin, the gateway, then a 404 for anything else.
const abuseSite = "route {\n\t\tgemini_synapse_admin /admin\n\t\tgemini_synapse\n\t\trespond \"Not found\" 404\n\t}"

// TestAbuseGarbageRequests sends 10k requests of garbage through a real caddy: random, near-miss
// and missing access keys in every place a key goes; paths with `..`, `%2e%2e`, `//host`,
// backslashes, NUL bytes, bad percent-encoding and 64 KiB of length; huge, duplicated,
// malformed and invalid-UTF-8 headers; bodies of invalid UTF-8, 100-level nesting, a 1 MiB JSON
// string, truncated JSON, bad chunked framing. One request in eight carries the valid access
// key, so the garbage also reaches the upstream.
//
// Every answer must be one of: a Gemini error envelope from the gateway (401/403 for a bad key,
// 404 for an unknown upload session), an upstream answer to an authenticated request, the site's
// own 404 for a path that is not the API's once cleaned, or Go's HTTP server refusing a request
// it cannot parse before caddy or the gateway see it (counted apart, per variant). Then: no pool
// key in any answer or log line (the helpers), caddy's RSS flat, no key penalised, no upstream
// call for an unauthenticated request, and request-log rows only for the authenticated ones.
func TestAbuseGarbageRequests(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	// Caddy refuses a request line and headers over 16 KiB by default (431, before any
	// handler); the limit is raised so that 64 KiB paths and headers reach the gateway, as they
	// would where an operator raised it.
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}, Site: abuseSite,
		Options: []string{serversOption("max_header_size 1MiB")}})
	host := strings.TrimPrefix(g.URL, "http://")
	pid := g.cmd.Process.Pid

	// Warm up: the first requests allocate the process's pools and buffers.
	const warmRows = 20
	for range warmRows {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if !eventually(10*time.Second, func() bool { rows, _ := requestLogTotal(t, g); return rows == warmRows }) {
		rows, _ := requestLogTotal(t, g)
		t.Fatalf("%d request-log rows after %d requests", rows, warmRows)
	}
	fake.Reset()
	rssBefore, hwmBefore := rss(t, pid)

	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("E2E_ABUSE_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (E2E_ABUSE_SEED=%d reproduces the run)", seed, seed)
	reqs := make([]*abuseReq, abuseRequests)
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	bodies := newAbuseBodies(r, host)
	for i := range reqs {
		reqs[i] = newAbuseReq(r, i, bodies)
	}

	tally := &abuseTally{classes: map[string]int{}, statuses: map[string]int{}, refusedBy: map[string]int{}, badWhy: map[string]int{}}
	sampler := sampleRSS(pid, 50*time.Millisecond)
	var next atomic.Int64
	var sent atomic.Int64
	// RSS as each quarter of the run completes: flat, not climbing with the requests.
	var quarters [4]atomic.Int64
	start := time.Now()
	deadline := start.Add(abuseBudget)
	var wg sync.WaitGroup
	for range abuseConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := &rawConn{addr: host}
			defer rc.close()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(reqs) || time.Now().After(deadline) {
					return
				}
				a := reqs[i]
				wire := a.wire(host)
				resp, body, err := rc.do(a, wire)
				if k := sent.Add(1); k%(abuseRequests/4) == 0 {
					quarters[k/(abuseRequests/4)-1].Store(vmRSS(pid))
				}
				tally.add(a, resp, body, err, pool)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	peakRSS := sampler.Stop()
	rssAfter, hwmAfter := rss(t, pid)

	n := int(sent.Load())
	var classes []string
	for c, k := range tally.classes {
		classes = append(classes, fmt.Sprintf("%s: %d", c, k))
	}
	sort.Strings(classes)
	var statuses []string
	for c, k := range tally.statuses {
		statuses = append(statuses, fmt.Sprintf("%s: %d", c, k))
	}
	sort.Strings(statuses)
	var refused []string
	for k, c := range tally.refusedBy {
		refused = append(refused, fmt.Sprintf("%s=%d", k, c))
	}
	sort.Strings(refused)
	t.Logf("%d requests in %v (%.0f/s, concurrency %d)", n, took.Round(time.Millisecond), float64(n)/took.Seconds(), abuseConcurrency)
	t.Logf("answers by class:\n\t%s", strings.Join(classes, "\n\t"))
	t.Logf("answers by class and status:\n\t%s", strings.Join(statuses, "\n\t"))
	t.Logf("refused by Go's server, per variant in the request: %s", strings.Join(refused, " "))
	t.Logf("caddy RSS: %s before, %s after, %s highest sampled; peak (VmHWM) %s before, %s after (growth %s); after each quarter of the requests: %s, %s, %s, %s",
		mib(rssBefore), mib(rssAfter), mib(peakRSS), mib(hwmBefore), mib(hwmAfter), mib(hwmAfter-hwmBefore),
		mib(quarters[0].Load()), mib(quarters[1].Load()), mib(quarters[2].Load()), mib(quarters[3].Load()))

	switch {
	case n < abuseRequests/2:
		t.Errorf("only %d of %d requests were sent within %v", n, abuseRequests, abuseBudget)
	case n < abuseRequests:
		t.Logf("the machine is slow: only %d of %d requests were sent within %v", n, abuseRequests, abuseBudget)
	}
	for _, b := range tally.bad {
		t.Errorf("unexpected answer: %s", b)
	}
	if tally.keysInReply > 0 {
		t.Errorf("%d answers contain a full pool key", tally.keysInReply)
	}
	if growth := max(hwmAfter-hwmBefore, peakRSS-rssBefore); growth > abuseRSSGrowth {
		t.Errorf("caddy's RSS grew by %s during the run (limit %s)", mib(growth), mib(abuseRSSGrowth))
	}
	// The first quarter warms up the buffers that big garbage needs; from then on it is flat.
	if q1, q4 := quarters[0].Load(), quarters[3].Load(); q1 > 0 && q4-q1 > abuseRSSClimb {
		t.Errorf("caddy's RSS climbed by %s from the first quarter of the requests to the last (limit %s)", mib(q4-q1), mib(abuseRSSClimb))
	}
	if tally.authedSeen == 0 || tally.unauth401 == 0 {
		t.Fatalf("the run has %d authenticated and %d rejected requests: the mix is broken", tally.authedSeen, tally.unauth401)
	}

	// The upstream saw authenticated requests only, each with exactly one key, a pool key.
	calls := fake.Calls()
	var marked, unauthUp int
	for _, c := range calls {
		m := c.Header.Get(abuseMarker)
		switch {
		case strings.HasPrefix(m, "u"):
			unauthUp++
		case strings.HasPrefix(m, "a"):
			marked++
		case c.Method == http.MethodGet && c.Path == "/v1beta/files":
			// files.list merged over every key: the gateway's own calls, without the client's
			// headers, for an authenticated GET .../files.
		default:
			t.Errorf("upstream call %s %.200q carries no %s marker", c.Method, c.Path+"?"+c.RawQuery, abuseMarker)
		}
		if v := c.Header.Values("X-Goog-Api-Key"); len(v) > 1 {
			t.Errorf("upstream call %s %s carries %d x-goog-api-key values", c.Method, c.Path, len(v))
		}
		for _, h := range []string{"Cf-Connecting-Ip", "X-Real-Ip", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Origin"} {
			if c.Header.Get(h) != "" {
				t.Errorf("upstream call %s %s carries the client's %s", c.Method, c.Path, h)
			}
		}
	}
	// assertCleanUpstream reads each call's query as a whole; the garbage queries clients sent
	// (bad escapes, a bare `key`) are checked here part by part and then left out of it.
	var bareKeys int
	checked := make([]fakegemini.Call, len(calls))
	for i, c := range calls {
		cred, bare := queryCredential(c.RawQuery)
		if cred || strings.Contains(c.RawQuery, accessKey) {
			t.Errorf("upstream call %s %s carries a credential in its query", c.Method, c.Path)
		}
		if bare {
			bareKeys++
		}
		if q, err := url.ParseQuery(c.RawQuery); err != nil || q.Has("key") {
			c.RawQuery = ""
		}
		checked[i] = c
	}
	assertCleanUpstream(t, checked, pool, accessKey)
	t.Logf("upstream: %d calls, %d of them marked as authenticated requests", len(calls), marked)
	if bareKeys > 0 {
		// A bare `key` (no '=', no value) carries no credential, but Google would read it as an
		// empty key parameter next to the pool key's header.
		t.Errorf("%d upstream calls kept a bare `key` query parameter (no value) the client sent", bareKeys)
	}
	if marked == 0 {
		t.Errorf("no upstream call carries the %s marker: the check for unauthenticated calls proves nothing", abuseMarker)
	}
	if unauthUp > 0 {
		t.Errorf("%d upstream calls were made for unauthenticated requests", unauthUp)
	}

	assertPoolUntouched(t, g, len(pool))

	// One request-log row per authenticated request, none for the rest.
	want := warmRows + int64(tally.authedSeen)
	var rows, stats int64
	settled := eventually(10*time.Second, func() bool {
		rows, stats = requestLogTotal(t, g)
		return rows >= want
	})
	time.Sleep(time.Second) // let a writer that is still behind show more rows
	rows, stats = requestLogTotal(t, g)
	t.Logf("request log: %d rows (stats total %d); want %d: %d from the warm-up, %d authenticated; %d unauthenticated requests were answered by the gateway (%d of them 401, %d unknown upload sessions)",
		rows, stats, want, warmRows, tally.authedSeen, tally.unauthSeen, tally.unauth401, tally.uploadSeen)
	if !settled || rows != want || stats != want {
		t.Errorf("request log has %d rows and the stats count %d requests, want %d (the authenticated ones): %d unauthenticated requests reached the gateway",
			rows, stats, want, tally.unauthSeen)
	}

	// The rejections are counted in a metric instead: a 401 is a missing or wrong key, a 404
	// to an upload chunk an unknown session.
	const rej = "caddy_gemini_synapse_rejected_total"
	m := g.scrapeMetrics()
	var series []string
	for name, v := range m {
		if strings.HasPrefix(name, rej) {
			series = append(series, fmt.Sprintf("%s=%v", strings.TrimPrefix(name, rej), v))
		}
	}
	sort.Strings(series)
	t.Logf("%s: %s", rej, strings.Join(series, " "))
	keyless := m[rej+`{reason="missing_key"}`] + m[rej+`{reason="wrong_key"}`]
	if keyless != float64(tally.unauth401) || m[rej+`{reason="unknown_upload_session"}`] != float64(tally.upload404) ||
		m[rej+`{reason="disabled_key"}`] != 0 {
		t.Errorf("%s: %s; want missing_key + wrong_key = %d (the 401s), unknown_upload_session = %d, disabled_key = 0",
			rej, strings.Join(series, " "), tally.unauth401, tally.upload404)
	}
}
