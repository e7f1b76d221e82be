package store

import "time"

// UploadSession is a resumable upload started through the gateway. Its id (Google's
// upload_id) is the credential of every chunk, and the chunks must go to the key that
// started it.
type UploadSession struct {
	ID          string // Google's upload_id
	KeyID       int64  // the pool key that started it
	UpstreamURI string // path and query of Google's upload URL, without any key
	AccessKeyID int64  // the access key that started it (for the request log)
	CreatedAt   time.Time
	ExpiresAt   time.Time
}

// Resource is a Gemini resource created through the gateway and owned by the Google project of
// one pool key.
type Resource struct {
	Name        string // e.g. "files/abc", "cachedContents/xyz", "batches/123"
	Kind        string // the first segment of the name: "files", "cachedContents", ...
	KeyID       int64  // the owning pool key
	AccessKeyID int64  // the access key that created it, 0 when none did (see Owner)
	CreatedAt   time.Time
	ExpiresAt   time.Time // zero when it does not expire (or Google did not say)
}

// Owner is who owns a stored resource: the pool key whose Google project holds it, and the
// access key that created it. AccessKeyID is 0 when no access key did: the resource was made
// outside the gateway, or recorded before resources kept their access key.
type Owner struct {
	KeyID       int64
	AccessKeyID int64
}
