package store

import (
	"crypto/sha256"
	"time"
)

// AccessKey is a client credential. Only the SHA-256 of the secret is stored.
type AccessKey struct {
	ID         int64
	Hash       [32]byte
	Label      string
	Enabled    bool
	CreatedAt  time.Time
	LastUsedAt time.Time // zero if never used
	Policy     string    // the policy as JSON, empty when it has none; the store does not read it
}

// HashSecret returns the SHA-256 of secret, the form in which access keys are stored and looked
// up.
func HashSecret(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// ConfigAccessKey is one of the Caddyfile's `access_key <label> <secret> {policy}` entries.
type ConfigAccessKey struct {
	Secret string
	Label  string
	Policy string // JSON, empty for none
}

// AccessKeyUpdate is an edit of an access key made in the admin panel; nil fields are left
// unchanged.
type AccessKeyUpdate struct {
	Label  *string
	Policy *string // JSON, empty for none
}
