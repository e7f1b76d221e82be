package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Read sizes of the copy loop: a unary answer is read in 8 KiB, a stream in 4 KiB (an event
// is far smaller, and a buffer is held as long as its stream is open).
const (
	copyReadSize   = 8 << 10
	streamReadSize = 4 << 10
)

var (
	copyPool   = sync.Pool{New: func() any { b := make([]byte, copyReadSize); return &b }}
	streamPool = sync.Pool{New: func() any { b := make([]byte, streamReadSize); return &b }}
)
var tailPool = sync.Pool{New: func() any { return new(tail) }}

// copyResponse sends a successful upstream answer to the client as it arrives: every read is
// written and, for streams, flushed at once; nothing is re-encoded. A tail of the bytes is
// kept to read the token usage at the end without holding the stream.
func (x *exchange) copyResponse(resp *http.Response, secret string) {
	defer resp.Body.Close()
	hdr := x.w.Header()
	copyResponseHeaders(hdr, resp.Header, secret)
	if resp.ContentLength >= 0 && !resp.Uncompressed {
		hdr.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	guardAnswer(hdr)
	ct := resp.Header.Get("Content-Type")
	flush := x.stream || resp.ContentLength < 0 || strings.HasPrefix(ct, "text/event-stream")
	x.status = resp.StatusCode
	x.w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(x.w)
	if flush {
		_ = rc.Flush()
	}

	pool := &copyPool
	if flush {
		pool = &streamPool
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	t := tailPool.Get().(*tail)
	t.reset()
	defer tailPool.Put(t)
	buf := *bp
	kf := keyFilter{secret: []byte(secret)}
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 && x.ttfb == 0 {
			x.ttfb = time.Since(x.start)
		}
		out := kf.filter(buf[:n])
		if rerr == io.EOF {
			// What the filter held back was not the start of the key after all.
			out = append(out, kf.flush()...)
		}
		if len(out) > 0 {
			t.write(out)
			if _, werr := x.w.Write(out); werr != nil {
				x.errText = "client went away mid-response"
				return
			}
			if flush {
				if ferr := rc.Flush(); ferr != nil {
					x.errText = "client went away mid-response"
					return
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if x.r.Context().Err() != nil {
				x.errText = "client went away mid-response"
				return
			}
			// The upstream broke the stream after we answered 200: the status cannot change,
			// so the client must see a truncated response, not a clean end.
			x.errText = "upstream broke the response: " + string(maskSecret([]byte(rerr.Error()), secret))
			x.status = http.StatusBadGateway
			x.report(x.keyID, keypool.ClassifyError(rerr), http.StatusBadGateway)
			panic(http.ErrAbortHandler)
		}
	}
	t.finish()
	x.usage = t.usage(x.openAI)
	if x.stream {
		// The tail has been through the key filter, so msg holds no key.
		if code, msg, ok := t.streamError(); ok {
			x.status = code
			x.errText = "mid-stream error: " + msg
			x.core.store.LogError(store.ErrorLog{Time: time.Now(), KeyID: x.keyID, AccessKeyID: x.access,
				Model: x.model, Path: x.path, Status: code, Message: x.errText})
		}
	}
}

// tailKeep is how many of the last bytes of a response are kept for the usage tap. Gemini puts
// usageMetadata near the end of every answer and of every stream event.
const tailKeep = 4 << 10

// tail keeps the last tailKeep bytes written to it, in a ring: no copying while a stream runs.
type tail struct {
	ring [tailKeep]byte
	pos  int    // where the next byte goes
	full bool   // the ring has wrapped
	buf  []byte // the kept bytes in order, set by finish
}

func (t *tail) reset() { t.pos, t.full, t.buf = 0, false, nil }

func (t *tail) write(p []byte) {
	if len(p) >= tailKeep {
		copy(t.ring[:], p[len(p)-tailKeep:])
		t.pos, t.full = 0, true
		return
	}
	n := copy(t.ring[t.pos:], p)
	copy(t.ring[:], p[n:])
	t.pos += len(p)
	if t.pos >= tailKeep {
		t.pos -= tailKeep
		t.full = true
	}
}

// finish puts the kept bytes in order into t.buf, for usage and streamError.
func (t *tail) finish() {
	if !t.full {
		t.buf = t.ring[:t.pos]
		return
	}
	t.buf = append(append(make([]byte, 0, tailKeep), t.ring[t.pos:]...), t.ring[:t.pos]...)
}

// usage holds the token counts of one answer.
type usage struct {
	prompt, candidates, thoughts, total int64
}

// usage reads the last usageMetadata (native) or usage (OpenAI-compatible) object in the tail.
// Counts are cumulative in streams, so the last one is the whole answer's.
func (t *tail) usage(openAI bool) usage {
	key := []byte(`"usageMetadata"`)
	if openAI {
		key = []byte(`"usage"`)
	}
	i := bytes.LastIndex(t.buf, key)
	if i < 0 {
		return usage{}
	}
	rest := t.buf[i+len(key):]
	j := bytes.IndexByte(rest, '{')
	if j < 0 {
		return usage{}
	}
	dec := json.NewDecoder(bytes.NewReader(rest[j:]))
	if openAI {
		var u struct {
			Prompt     int64 `json:"prompt_tokens"`
			Completion int64 `json:"completion_tokens"`
			Total      int64 `json:"total_tokens"`
			Details    struct {
				Reasoning int64 `json:"reasoning_tokens"`
			} `json:"completion_tokens_details"`
		}
		if dec.Decode(&u) != nil {
			return usage{}
		}
		return usage{prompt: u.Prompt, candidates: u.Completion, thoughts: u.Details.Reasoning, total: u.Total}
	}
	var u struct {
		Prompt     int64 `json:"promptTokenCount"`
		Candidates int64 `json:"candidatesTokenCount"`
		Thoughts   int64 `json:"thoughtsTokenCount"`
		Total      int64 `json:"totalTokenCount"`
	}
	if dec.Decode(&u) != nil {
		return usage{}
	}
	return usage{prompt: u.Prompt, candidates: u.Candidates, thoughts: u.Thoughts, total: u.Total}
}

// streamError recognises the bare {"error":{…}} object Google writes into a stream that fails
// after it has started (without a data: prefix).
func (t *tail) streamError() (code int, msg string, ok bool) {
	b := bytes.TrimRight(t.buf, "\r\n \t")
	if len(b) > 0 && b[len(b)-1] == ']' {
		// A JSON-array stream (no alt=sse): the error is its last element.
		b = bytes.TrimRight(b[:len(b)-1], "\r\n \t")
		if i := bytes.LastIndex(b, []byte("\n,")); i >= 0 {
			b = b[i+2:]
		} else {
			b = bytes.TrimPrefix(bytes.TrimSpace(b), []byte("["))
		}
	} else {
		if i := bytes.LastIndex(b, []byte("\n\n")); i >= 0 {
			b = b[i+2:]
		}
		if i := bytes.LastIndex(b, []byte("\r\n\r\n")); i >= 0 {
			b = b[i+4:]
		}
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' || !bytes.Contains(b, []byte(`"error"`)) {
		return 0, "", false
	}
	var e struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &e) != nil || e.Error.Code == 0 {
		return 0, "", false
	}
	return e.Error.Code, e.Error.Message, true
}

// redacted is what replaces a pool key wherever the upstream echoed one. It has the key's
// length, so a body keeps the Content-Length the upstream announced.
func redacted(secret string) string {
	const word = "[redacted]"
	if len(secret) < len(word) {
		return strings.Repeat("*", len(secret))
	}
	return word + strings.Repeat("*", len(secret)-len(word))
}

// maskSecret replaces every occurrence of a pool key in b.
func maskSecret(b []byte, secret string) []byte {
	if secret == "" || !bytes.Contains(b, []byte(secret)) {
		return b
	}
	return bytes.ReplaceAll(b, []byte(secret), []byte(redacted(secret)))
}

// keyFilter redacts a pool key from a byte stream that may split the key across reads. It holds
// back only the end of a read that could be the start of the key (an event boundary never is),
// so streams are not delayed.
type keyFilter struct {
	secret []byte
	carry  []byte // held-back bytes, shorter than secret
}

// filter returns p, redacted, minus any end that could start the key.
func (f *keyFilter) filter(p []byte) []byte {
	if len(f.secret) == 0 {
		return p
	}
	data := p
	if len(f.carry) > 0 {
		data = append(f.carry, p...)
		f.carry = nil
	}
	if bytes.Contains(data, f.secret) {
		data = bytes.ReplaceAll(data, f.secret, []byte(redacted(string(f.secret))))
	}
	if k := partialKeySuffix(data, f.secret); k > 0 {
		f.carry = append([]byte(nil), data[len(data)-k:]...)
		data = data[:len(data)-k]
	}
	return data
}

// flush returns what is held back, at the end of the stream.
func (f *keyFilter) flush() []byte {
	c := f.carry
	f.carry = nil
	return c
}

// partialKeySuffix returns the length of the longest end of b that is a proper prefix of secret.
func partialKeySuffix(b, secret []byte) int {
	for k := min(len(secret)-1, len(b)); k > 0; k-- {
		if b[len(b)-k] == secret[0] && bytes.Equal(b[len(b)-k:], secret[:k]) {
			return k
		}
	}
	return 0
}

// writeRaw returns an upstream answer already read into b (masked), with its status and
// headers: upload errors may be plain text, and their X-Goog-Upload-* headers matter.
func (x *exchange) writeRaw(resp *http.Response, b []byte, secret, reason string) {
	hdr := x.w.Header()
	copyResponseHeaders(hdr, resp.Header, secret)
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	guardAnswer(hdr)
	x.status = resp.StatusCode
	if resp.StatusCode >= 400 {
		x.errText = reason
	}
	x.w.WriteHeader(resp.StatusCode)
	x.w.Write(b)
}

// guardAnswer sets, on an upstream answer's headers, what keeps it from running script in the
// gateway's origin, which the admin panel may share: nosniff always (also over an upstream's
// own value), and a sandbox for what is neither JSON nor an event stream (a file download, an
// HTML error page, an answer with no type that a browser would sniff). Headers only: nothing
// is buffered or delayed.
func guardAnswer(h http.Header) {
	h.Set("X-Content-Type-Options", "nosniff")
	if !scriptless(h.Get("Content-Type")) {
		h.Set("Content-Security-Policy", "sandbox")
	}
}

// scriptless tells the media types the API answers with (JSON, and server-sent events) from
// the rest.
func scriptless(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.TrimSpace(mt)
	const app, suffix = "application/", "+json"
	return strings.EqualFold(mt, "application/json") || strings.EqualFold(mt, "text/event-stream") ||
		len(mt) > len(app)+len(suffix) && strings.EqualFold(mt[:len(app)], app) &&
			strings.EqualFold(mt[len(mt)-len(suffix):], suffix)
}
