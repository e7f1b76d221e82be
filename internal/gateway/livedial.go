package gateway

// Opening a Live session upstream: the WebSocket handshake with one credential, the client's
// setup, the upstream's first answer, and what each failure means for the key.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/websocket"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
)

// liveHandshakeTimeout bounds the upstream dial, TLS and WebSocket handshakes.
const liveHandshakeTimeout = 10 * time.Second

// liveNetDialer dials upstream Live connections.
var liveNetDialer = &net.Dialer{Timeout: liveHandshakeTimeout, KeepAlive: 30 * time.Second}

// attempt opens the upstream session with key id: the handshake with the pool key secret in
// x-goog-api-key (or, for a token's session, the token in Authorization: Token), the client's
// setup, and the upstream's first message, returned unsent. A failure is classified, confirmed
// and reported as roundTrip does for HTTP (attempt.go), and returned.
func (s *liveSession) attempt(id int64, secret, token string) (liveFrame, *liveFailure) {
	x := s.x
	toPool := token == ""
	hdr := liveRequestHeader(x.r.Header)
	if toPool {
		hdr.Set("X-Goog-Api-Key", secret)
	} else {
		hdr.Set("Authorization", "Token "+token)
	}
	u := liveUpstreamURL(x.set.upstream, x.path, stripKeyParam(x.r.URL.RawQuery))
	sent := time.Now()
	up, status, body, err := dialLive(x.core.ctx, x.set, u, hdr, secret)
	if err != nil {
		return liveFrame{}, s.failed(id, secret, keypool.ClassifyError(err), 0, nil, toPool, sent)
	}
	if up == nil {
		o := keypool.Classify(status, body, time.Now())
		if status < 400 {
			o = keypool.Outcome{Kind: keypool.Transient, Reason: "the upstream answered the WebSocket handshake with HTTP " + http.StatusText(status)}
		}
		f := s.failed(id, secret, o, status, body, toPool, sent)
		return liveFrame{}, f
	}
	up.SetWriteDeadline(time.Now().Add(liveSetupTimeout))
	if err := up.WriteMessage(s.setupType, s.setup); err != nil {
		up.Close()
		return liveFrame{}, s.failed(id, secret, keypool.ClassifyError(err), 0, nil, toPool, sent)
	}
	up.SetReadDeadline(time.Now().Add(liveSetupTimeout))
	mt, msg, err := up.ReadMessage()
	if err != nil {
		up.Close()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			return liveFrame{}, s.failed(id, secret, keypool.ClassifyError(err), 0, nil, toPool, sent)
		}
		text := string(maskSecret([]byte(ce.Text), secret))
		o, st := liveCloseOutcome(ce.Code, text, time.Now())
		f := s.failed(id, secret, o, st, nil, toPool, sent)
		f.code, f.text = ce.Code, text
		return liveFrame{}, f
	}
	up.SetReadDeadline(time.Time{})
	up.SetWriteDeadline(time.Time{})
	x.attempted(keypool.Success, http.StatusOK, time.Since(sent))
	s.report(id, keypool.Outcome{Kind: keypool.Success}, http.StatusOK, toPool)
	s.up = up
	return liveFrame{mt: mt, data: msg}, nil
}

// failed accounts for a failed attempt (outcome o; the handshake's status and body, if it was
// refused) and returns it as a liveFailure.
func (s *liveSession) failed(id int64, secret string, o keypool.Outcome, status int, body []byte, toPool bool, sent time.Time) *liveFailure {
	x := s.x
	took := time.Since(sent)
	if toPool {
		o = x.confirm(id, secret, o)
	}
	x.attempted(o.Kind, status, took)
	f := &liveFailure{status: status, body: body, outcome: o, reason: o.Reason}
	if status == 0 {
		// A network failure: the client is told a request id, the error log has the cause.
		f.status = http.StatusBadGateway
		x.requestID()
		f.logged = true
	}
	ch := s.report(id, o, f.status, toPool)
	f.outage = ch.Outage
	return f
}

// liveRequestHeader is the client's handshake header as the upstream gets it: the request
// header policy of every call (upstream.go: no client credential, address or cookie), less the
// client's own WebSocket handshake, which the dialer makes anew.
func liveRequestHeader(src http.Header) http.Header {
	h := make(http.Header, len(src))
	copyRequestHeaders(h, src)
	for _, k := range [...]string{"Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions", "Sec-Websocket-Protocol", "Sec-Websocket-Accept"} {
		delete(h, k)
	}
	return h
}

// liveUpstreamURL is upstreamURL with the WebSocket scheme of the base's.
func liveUpstreamURL(base *url.URL, path, rawQuery string) string {
	u := *base
	if u.Scheme == "https" {
		u.Scheme = "wss"
	} else {
		u.Scheme = "ws"
	}
	return upstreamURL(&u, path, rawQuery)
}

// dialLive makes the WebSocket handshake with the upstream at u (ws:// or wss://), through the
// configured proxy if any. A handshake the upstream refuses gives its status and whole answer
// (up to maxErrorBody, the pool key secret masked), not an error: gorilla keeps only the first
// 1 KiB of it, which can cut Google's JSON before the structured fields that classify it, so
// without a proxy the bytes read during the handshake are kept aside and the answer is read
// again from them. (Through a proxy, where TLS sits above the dialled connection, the first
// 1 KiB is all there is.)
func dialLive(ctx context.Context, set *settings, u string, hdr http.Header, secret string) (conn *websocket.Conn, status int, body []byte, err error) {
	var hc *handshakeConn
	d := websocket.Dialer{
		HandshakeTimeout: liveHandshakeTimeout,
		WriteBufferPool:  &liveWritePool,
	}
	if set.proxy == "" {
		d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := liveNetDialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			hc = &handshakeConn{Conn: c, rec: new(bytes.Buffer)}
			return hc, nil
		}
		d.NetDialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := liveNetDialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			host, _, _ := net.SplitHostPort(addr)
			tc := tls.Client(c, &tls.Config{ServerName: host, NextProtos: []string{"http/1.1"}})
			if err := tc.HandshakeContext(ctx); err != nil {
				c.Close()
				return nil, err
			}
			hc = &handshakeConn{Conn: tc, rec: new(bytes.Buffer)}
			return hc, nil
		}
	} else if pu, perr := url.Parse(set.proxy); perr == nil {
		if pu.Scheme == "socks5h" {
			pu.Scheme = "socks5" // gorilla's SOCKS5 dialer lets the proxy resolve names already
		}
		d.Proxy = http.ProxyURL(pu)
	}
	conn, resp, err := d.DialContext(ctx, u, hdr)
	if err == nil {
		if hc != nil {
			hc.handshakeDone()
		}
		return conn, 0, nil, nil
	}
	if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil {
		if hc != nil {
			hc.release()
		}
		return nil, 0, nil, err
	}
	if hc != nil {
		body = hc.refusal(resp.StatusCode)
	}
	if body == nil {
		body, _ = io.ReadAll(resp.Body)
	}
	if body == nil {
		body = []byte{}
	}
	return nil, resp.StatusCode, maskSecret(body, secret), nil
}

// handshakeConn keeps what is read from a new upstream connection until its WebSocket
// handshake is over, and keeps the connection open past the dialer's Close when the handshake
// fails, so that the refusal can be read whole.
type handshakeConn struct {
	net.Conn
	rec *bytes.Buffer // nil once the handshake is over
}

// Read implements net.Conn.
func (c *handshakeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.rec != nil && n > 0 && c.rec.Len() < maxErrorBody {
		c.rec.Write(p[:n])
	}
	return n, err
}

// Close implements net.Conn: during the handshake it does nothing (release closes it).
func (c *handshakeConn) Close() error {
	if c.rec != nil {
		return nil
	}
	return c.Conn.Close()
}

// handshakeDone ends the recording: the connection now carries the session.
func (c *handshakeConn) handshakeDone() { c.rec = nil }

// release closes the connection for good.
func (c *handshakeConn) release() {
	c.rec = nil
	c.Conn.Close()
}

// refusal reads the whole answer of a refused handshake again, from the bytes read so far and
// whatever is left on the connection, and closes the connection. It returns nil when the
// answer cannot be read again.
func (c *handshakeConn) refusal(status int) []byte {
	defer c.release()
	seen := c.rec.Bytes()
	c.rec = nil
	c.Conn.SetReadDeadline(time.Now().Add(liveHandshakeTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(bytes.NewReader(seen), c.Conn)), nil)
	if err != nil || resp.StatusCode != status {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil && len(body) == 0 {
		return nil
	}
	return body
}
