package geminisynapse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store/postgres"
	"github.com/geminisynapse/caddy-gemini-synapse/store/transfer"
)

// The `caddy gemini-synapse` command and its subcommands: tools run beside the server, not in
// it.
func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "gemini-synapse",
		Short: "Tools of the Gemini Synapse gateway (migrate)",
		Long: `
Tools of the Gemini Synapse gateway (the gemini_synapse app), run beside the
server. Subcommands:

  migrate   copy a SQLite database into a PostgreSQL database
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(migrateCommand())
		},
	})
}

// databaseURLEnv names the environment variable migrate reads the PostgreSQL URL from when
// --to is not given, so that the password need not appear in the process list.
const databaseURLEnv = "DATABASE_URL"

// migrateCommand returns `caddy gemini-synapse migrate`.
func migrateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate --from <sqlite path> --to <postgres url>",
		Short: "Copies a SQLite database into a PostgreSQL database",
		Long: `
Copies everything the gateway keeps in a SQLite database (upstream keys with their
state and projects, cooldowns, access keys with their policies, settings,
tombstones of deleted keys, resource owners, upload and admin sessions, the
request and error logs and their statistics) into a PostgreSQL database, whose
schema it first brings up to date. Ids are kept; every identity sequence is then
moved above the ids copied, so new rows never reuse one.

It is idempotent: a second run copies nothing and changes nothing, and rows
already present in PostgreSQL are left as they are. Everything is written in one
transaction: all of it or nothing. The SQLite file is only read (opened
read-only). Stop the gateway first for a consistent copy: what it writes after
the copy stays behind.

--to defaults to the environment variable DATABASE_URL (which keeps the password
out of the process list); both flags accept {env.NAME} placeholders. The URL is
printed with its password masked.

Prints, per table, the rows in SQLite, the rows copied and the rows already
present.
`,
		Example: `  caddy gemini-synapse migrate --from /var/lib/gemini-synapse/caddy/gemini_synapse/data.db \
      --to 'postgres://synapse@db.internal:5432/synapse?sslmode=require'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			from, _ := cmd.Flags().GetString("from")
			to, _ := cmd.Flags().GetString("to")
			cmd.SilenceUsage = true // from here on an error is not a usage mistake
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runMigrate(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), from, to, caddy.Log())
		},
	}
	cmd.Flags().String("from", "", "path of the SQLite database (the gemini_synapse app's database)")
	cmd.Flags().String("to", "", "PostgreSQL URL (default $"+databaseURLEnv+")")
	return cmd
}

// runMigrate copies the SQLite database at from into the PostgreSQL database at to (or
// $DATABASE_URL), printing the figures to out and progress to progress. {env.NAME}
// placeholders in both are replaced.
func runMigrate(ctx context.Context, out, progress io.Writer, from, to string, logger *zap.Logger) error {
	repl := caddy.NewReplacer()
	from = strings.TrimSpace(repl.ReplaceKnown(from, ""))
	to = strings.TrimSpace(repl.ReplaceKnown(to, ""))
	if to == "" {
		to = strings.TrimSpace(os.Getenv(databaseURLEnv))
	}
	switch {
	case from == "":
		return errors.New("migrate: --from is required: the path of the SQLite database")
	case to == "":
		return fmt.Errorf("migrate: --to is required (or $%s): the URL of the PostgreSQL database", databaseURLEnv)
	case strings.Contains(from, "://"):
		return fmt.Errorf("migrate: --from %s is a URL: give the path of the SQLite file", postgres.MaskURL(from))
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	fmt.Fprintf(out, "copying %s into %s\n", from, postgres.MaskURL(to))
	res, err := transfer.Copy(ctx, from, to, transfer.Options{
		Logger:   logger.Named("gemini_synapse.migrate"),
		Progress: progress,
	})
	if err != nil {
		return fmt.Errorf("migrate: nothing was written: %w", err)
	}
	fmt.Fprintf(out, "SQLite schema version %d, PostgreSQL schema version %d; committed\n",
		res.SQLiteVersion, res.PostgresVersion)
	return res.Write(out)
}
