package store

import "context"

// Cluster is what an engine shared by several gateway instances offers (PostgreSQL); an engine
// of one instance (SQLite) does not implement it. It carries the hot state the instances keep
// in memory (key states, cooldowns, access keys, settings) from the instance that changed it to
// the others, and elects the one instance that runs the scheduled jobs.
type Cluster interface {
	// Announce tells every other instance about a change, without waiting for them (best
	// effort: an announcement lost with a connection is made good by the EventResync the
	// receiver gets when it reconnects).
	Announce(ctx context.Context, ev Event) error
	// Events delivers the other instances' announcements (never this instance's own), and an
	// EventResync whenever the listening connection was re-established: what was announced
	// meanwhile is lost, and the state must be reloaded whole. An engine may also deliver one
	// when it first listens (what was announced before it listened is lost too). It is closed
	// by Close.
	Events() <-chan Event
	// Leader reports whether this instance runs the cluster's scheduled jobs, taking the
	// leadership when nobody holds it. A leader that dies loses it at once (the database
	// ends its session), and the next call of another instance takes it.
	Leader(ctx context.Context) bool
}

// Kinds of Event.
const (
	EventCooldown   = "cooldown"    // KeyID cools down for Model until Until
	EventKeyState   = "key"         // KeyID was disabled (Disabled) by what the upstream said
	EventProject    = "project"     // KeyID's project was learned: Project
	EventKeys       = "keys"        // keys were added, deleted or relabelled: reload them
	EventAccessKeys = "access_keys" // access keys or their policies changed: reload them
	EventSettings   = "settings"    // live settings changed: reload them
	EventResync     = "resync"      // announcements may have been lost: reload everything
)

// Event is one announced change.
type Event struct {
	Kind     string `json:"k"`
	KeyID    int64  `json:"id,omitempty"`
	Model    string `json:"m,omitempty"`
	Until    int64  `json:"u,omitempty"` // unix milliseconds
	Disabled bool   `json:"d,omitempty"`
	Project  string `json:"p,omitempty"`
}
