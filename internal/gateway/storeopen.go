package gateway

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/postgres"
	"github.com/geminisynapse/caddy-gemini-synapse/store/sqlite"
)

// postgresOpenTimeout bounds opening a PostgreSQL database: connecting (each connection has
// its own connect timeout, 10 s unless the URL sets connect_timeout) and migrating, which may
// wait for another instance migrating the same database.
const postgresOpenTimeout = 2 * time.Minute

// IsDatabaseURL reports whether a `database` value names a PostgreSQL database (a
// postgres:// or postgresql:// URL) rather than a SQLite file.
func IsDatabaseURL(database string) bool {
	scheme, _, ok := strings.Cut(database, "://")
	return ok && (strings.EqualFold(scheme, "postgres") || strings.EqualFold(scheme, "postgresql"))
}

// storeName is a `database` value fit for logs and errors: a URL's password is masked.
func storeName(database string) string {
	if IsDatabaseURL(database) {
		return postgres.MaskURL(database)
	}
	return database
}

// openStore opens the database named by path with the engine it calls for. It is the one
// place that chooses an engine: a postgres:// or postgresql:// URL is a PostgreSQL database
// (store/postgres, shared by several instances), anything else a SQLite file (store/sqlite).
// An error never shows the URL's password.
func openStore(path string, logger *zap.Logger) (store.Store, error) {
	if !IsDatabaseURL(path) {
		return sqlite.Open(path, logger)
	}
	ctx, cancel := context.WithTimeout(context.Background(), postgresOpenTimeout)
	defer cancel()
	st, err := postgres.Open(ctx, path, logger)
	if err != nil {
		return nil, errors.New(maskPassword(err.Error(), path))
	}
	return st, nil
}

// maskPassword removes the password of the URL raw from msg, should a driver message quote it
// (postgres.Open masks the URL it names; this also covers a message that quotes the password
// alone, raw or escaped).
func maskPassword(msg, raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return msg
	}
	var secrets []string
	if pw, ok := u.User.Password(); ok && pw != "" {
		secrets = append(secrets, pw)
	}
	if pw := u.Query().Get("password"); pw != "" {
		secrets = append(secrets, pw)
	}
	for _, pw := range secrets {
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
		if esc := url.QueryEscape(pw); esc != pw {
			msg = strings.ReplaceAll(msg, esc, "xxxxx")
		}
		if esc := url.PathEscape(pw); esc != pw {
			msg = strings.ReplaceAll(msg, esc, "xxxxx")
		}
	}
	return msg
}
