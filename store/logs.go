package store

import (
	"strings"
	"time"
	"unicode/utf8"
)

// RequestLog is one client request, written asynchronously by LogRequest.
type RequestLog struct {
	Time        time.Time
	AccessKeyID int64 // 0 = none
	KeyID       int64 // upstream key of the last attempt, 0 = none
	Method      string
	Path        string // truncated to 1000 bytes
	Model       string
	Stream      bool
	Status      int
	Attempts    int
	Latency     time.Duration
	TTFB        time.Duration

	PromptTokens     int64
	CandidatesTokens int64
	ThoughtsTokens   int64
	TotalTokens      int64

	Error string // already masked by the caller; truncated to 1000 bytes

	// LimitHit is the access-key limit that refused the request (rpm, rpd, tpm, token_budget,
	// concurrency, models or expired), empty when none did; truncated to 32 bytes.
	LimitHit string
}

// ErrorLog is one failed upstream attempt, written asynchronously by LogError.
type ErrorLog struct {
	Time        time.Time
	KeyID       int64
	AccessKeyID int64
	Model       string
	Path        string // truncated to 1000 bytes
	Status      int
	Message     string // already masked by the caller; truncated to 1000 bytes
}

// Limits of the text stored in log rows, in bytes (see Truncate).
const (
	MaxTextLen   = 1000 // RequestLog.Error, ErrorLog.Message, KeyState.LastError
	MaxPathLen   = 1000
	MaxModelLen  = 200
	MaxMethodLen = 32
	MaxLimitLen  = 32 // RequestLog.LimitHit
)

// StatusClientClosed is the status the gateway logs for a request whose client went away
// before its answer (nginx's 499). A request row counts in its key's requests when its status
// is below 400 or this one; a failed final attempt has its own error row, which counts it.
const StatusClientClosed = 499

// Truncate cuts s to at most n bytes on a UTF-8 boundary. A cut string is copied, so a huge
// original is not kept alive by a queue.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.Clone(s[:n])
}

// LogQuery selects log rows, newest first. Zero fields do not filter.
type LogQuery struct {
	Limit       int // rows to return; 0 means 100, at most 10000
	Offset      int // rows to skip first, for paging
	Model       string
	KeyID       int64
	AccessKeyID int64
	Status      int
}

// Page returns the rows to return and to skip that q asks for: Limit 0 (or less) means 100,
// at most 10000; a negative Offset is 0.
func (q LogQuery) Page() (limit, offset int) {
	limit = q.Limit
	if limit <= 0 {
		limit = 100
	}
	return min(limit, 10000), max(q.Offset, 0)
}
