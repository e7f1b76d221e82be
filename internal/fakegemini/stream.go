package fakegemini

import (
	"bytes"
	"context"
	"net/http"
	"slices"
	"time"
)

// streamWriter writes a streamed answer piece by piece, flushing each one, and
// keeps the open-stream counter up to date.
type streamWriter struct {
	ctx context.Context
	w   http.ResponseWriter
	rc  *http.ResponseController
}

// startStream sends the 200 header with contentType and counts the stream as
// open until the returned function is called.
func (s *Server) startStream(x *exchange, contentType string) (*streamWriter, func()) {
	s.openStreams.Add(1)
	h := x.w.Header()
	h.Set("Content-Type", contentType)
	h.Set("X-Accel-Buffering", "no")
	x.w.WriteHeader(http.StatusOK)
	sw := &streamWriter{ctx: x.r.Context(), w: x.w, rc: http.NewResponseController(x.w)}
	_ = sw.rc.Flush()
	return sw, func() { s.openStreams.Add(-1) }
}

// wait sleeps for d, reporting false if the request ended first.
func (sw *streamWriter) wait(d time.Duration) bool {
	if d <= 0 {
		return sw.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-sw.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// send writes and flushes b, reporting false if the client is gone.
func (sw *streamWriter) send(b []byte) bool {
	if sw.ctx.Err() != nil {
		return false
	}
	if _, err := sw.w.Write(b); err != nil {
		return false
	}
	return sw.rc.Flush() == nil
}

// splitText cuts text into n contiguous pieces of near-equal rune count. The
// pieces joined give back text; some are empty when text is shorter than n.
func splitText(text string, n int) []string {
	r := []rune(text)
	pieces := make([]string, n)
	for i := range n {
		pieces[i] = string(r[i*len(r)/n : (i+1)*len(r)/n])
	}
	return pieces
}

// streamEvents yields, for each event of a stream of a, the response to send.
// The callback returns false to stop early.
func streamEvents(a answer, events int, emit func(i int, resp generateResponse) bool) {
	sent := ""
	for i, piece := range splitText(a.text, events) {
		sent += piece
		if !emit(i, a.response(piece, sent, i == events-1)) {
			return
		}
	}
}

// streamSSE writes a as Server-Sent Events: "data: {json}\r\n\r\n" per event,
// the last one with finishReason STOP. With SetFailAfterEvents, a bare error
// object follows the first n events and ends the stream.
func (s *Server) streamSSE(x *exchange, a answer) {
	events, delay, failAfter := s.streamShape()
	sw, done := s.startStream(x, "text/event-stream")
	defer done()
	ok := true
	streamEvents(a, events, func(i int, resp generateResponse) bool {
		if failAfter > 0 && i >= failAfter {
			return false
		}
		if i > 0 && !sw.wait(delay) {
			ok = false
			return false
		}
		ev := append([]byte("data: "), bytes.TrimSuffix(encodeJSON(resp, false), []byte("\n"))...)
		ok = sw.send(append(ev, "\r\n\r\n"...))
		return ok
	})
	if ok && failAfter > 0 && sw.wait(delay) {
		sw.send(encodeJSON(errorEnvelope{Error: overloadedError()}, false))
	}
}

// streamJSONArray writes a as a progressively written JSON array of
// pretty-printed responses: "[" + elements joined by "\r\n,\r\n" + "\r\n]".
// With SetFailAfterEvents, an {"error":...} element follows the first n.
func (s *Server) streamJSONArray(x *exchange, a answer) {
	events, delay, failAfter := s.streamShape()
	sw, done := s.startStream(x, contentTypeJSON)
	defer done()
	sep := []byte("[")
	element := func(v any) bool {
		b := slices.Concat(sep, bytes.TrimSuffix(encodeJSON(v, true), []byte("\n")))
		sep = []byte("\r\n,\r\n")
		return sw.send(b)
	}
	ok := true
	streamEvents(a, events, func(i int, resp generateResponse) bool {
		if failAfter > 0 && i >= failAfter {
			return false
		}
		if i > 0 && !sw.wait(delay) {
			ok = false
			return false
		}
		ok = element(resp)
		return ok
	})
	if !ok {
		return
	}
	if failAfter > 0 && !(sw.wait(delay) && element(errorEnvelope{Error: overloadedError()})) {
		return
	}
	sw.send([]byte("\r\n]"))
}
