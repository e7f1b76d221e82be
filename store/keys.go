package store

import (
	"errors"
	"fmt"
	"time"
)

// Key statuses.
const (
	StatusActive   = "active"
	StatusDisabled = "disabled"
)

// Key is an upstream Google API key of the pool.
type Key struct {
	ID             int64
	Secret         string
	Project        string // Google Cloud project label, "" when unknown (see CheckProject)
	Status         string // StatusActive or StatusDisabled
	DisabledReason string
	ManualDisabled bool // disabled by an operator, not by the pool
	Failures       int  // consecutive failures
	LastError      string
	LastUsedAt     time.Time // zero if never used
	Requests       int64     // attempts sent with this key
	FailedRequests int64     // attempts that failed
	CreatedAt      time.Time
}

// KeyState is the latest runtime state of an upstream key as the pool sees it. Only the newest
// state per key is written. A key disabled by an operator keeps its status and reason.
type KeyState struct {
	KeyID     int64
	Disabled  bool
	Reason    string // ignored unless Disabled
	Failures  int
	LastError string
}

// Cooldown keeps a key off one model until a time.
type Cooldown struct {
	KeyID int64
	Model string
	Until time.Time
}

// Project labels. Google's quota belongs to the Cloud project, not the key: keys carry an
// optional label naming their project, so a per-project 429 on one key can cool down its
// siblings. An operator sets labels (AddLabeledKeys, SetKeysProject); the gateway fills empty
// ones from error bodies that name the project (SaveKeyProject), never overwriting an
// operator's.

// MaxProjectLen is the longest project label, in bytes.
const MaxProjectLen = 64

// Errors of CheckProject.
var (
	// ErrProjectTooLong is returned for a label longer than MaxProjectLen bytes.
	ErrProjectTooLong = fmt.Errorf("must be at most %d characters", MaxProjectLen)
	// ErrProjectChars is returned for a label with a character other than the allowed ones.
	ErrProjectChars = errors.New("may hold only letters, digits and . _ : -")
)

// CheckProject reports whether s is a good project label: at most MaxProjectLen bytes of
// A-Z, a-z, 0-9, '.', '_', ':' and '-'. The empty label (no project) is good. Callers trim
// white space first; a label with white space in it is refused. The errors (ErrProjectTooLong,
// ErrProjectChars) read as the end of "project ...".
func CheckProject(s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '.', c == '_', c == ':', c == '-':
		default:
			return ErrProjectChars
		}
	}
	if len(s) > MaxProjectLen { // every allowed character is one byte
		return ErrProjectTooLong
	}
	return nil
}

// NewKey is an upstream key to add, with an optional project label.
type NewKey struct {
	// Secret is the key itself; white space around it is trimmed.
	Secret string
	// Project is the key's project label, "" for none; white space around it is trimmed.
	Project string
}

// NewKeys turns secrets into unlabelled NewKeys (what AddKeys adds).
func NewKeys(secrets []string) []NewKey {
	keys := make([]NewKey, len(secrets))
	for i, secret := range secrets {
		keys[i] = NewKey{Secret: secret}
	}
	return keys
}

// KeyProject is a key and the project label it got.
type KeyProject struct {
	// KeyID is the key's id.
	KeyID int64
	// Project is its new label.
	Project string
}

// AddResult is what AddLabeledKeys did.
type AddResult struct {
	// Added is how many keys were new.
	Added int
	// Relabeled lists, in input order, the keys already stored whose label the call changed.
	Relabeled []KeyProject
}
