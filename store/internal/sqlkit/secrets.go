package sqlkit

import (
	"strings"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Tombstones are a secret kind's tombstones (secrets deleted in the admin panel, by SHA-256)
// in the caller's transaction.
type Tombstones struct {
	Has   func(hash [32]byte) (bool, error) // whether the secret was deleted
	Clear func(hash [32]byte) error         // forget its deletion
}

// InsertSecrets is the one loop behind adding upstream keys and access keys. Each secret is
// trimmed of white space; an empty one is skipped. A secret from the config (fromConfig) that
// was deleted in the admin panel is skipped and counted in skipped; an operator's explicit add
// instead clears its tombstone, so it is wanted again. Then insert stores it, given its index
// in secrets, the trimmed secret and its SHA-256; an error from it (or from the tombstones)
// ends the loop and is returned as it is.
func InsertSecrets(secrets []string, fromConfig bool, tombs Tombstones,
	insert func(i int, secret string, hash [32]byte) error) (skipped int, err error) {
	for i, secret := range secrets {
		secret = strings.TrimSpace(secret)
		if secret == "" {
			continue
		}
		h := store.HashSecret(secret)
		if fromConfig {
			dead, err := tombs.Has(h)
			if err != nil {
				return skipped, err
			}
			if dead {
				skipped++
				continue
			}
		} else if err := tombs.Clear(h); err != nil {
			return skipped, err
		}
		if err := insert(i, secret, h); err != nil {
			return skipped, err
		}
	}
	return skipped, nil
}
