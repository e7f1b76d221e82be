package e2e

import (
	"database/sql"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
)

// TestOnlineBackupWhileServing follows the README's backup advice: while the gateway serves
// and writes its request log, `VACUUM INTO` and (when installed) the sqlite3 shell's `.backup`
// take a complete, consistent copy of the WAL-mode database, usable as a single file.
func TestOnlineBackupWhileServing(t *testing.T) {
	_, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	db := g.cfg.Database

	// Traffic for as long as the backups run.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, failed int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequest(http.MethodPost, g.URL+"/v1beta/models/"+modelFlash+":generateContent", strings.NewReader(genBody))
			req.Header.Set("X-Goog-Api-Key", accessKey)
			resp, err := g.Client.Do(req)
			sent++
			if err != nil || resp.StatusCode != 200 {
				failed++
			}
			if resp != nil {
				resp.Body.Close()
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	live, err := sql.Open("sqlite3", "file:"+db+"?mode=ro&_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	rowsNow := func() int {
		var n int
		if err := live.QueryRow(`SELECT COUNT(*) FROM request_logs`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if !eventually(20*time.Second, func() bool { return rowsNow() >= 20 }) {
		t.Fatalf("only %d request rows were written", rowsNow())
	}

	dir := t.TempDir()
	var backups []string
	before := rowsNow()
	vacuumed := filepath.Join(dir, "vacuum-into.db")
	if _, err := live.Exec(`VACUUM INTO ?`, vacuumed); err != nil {
		t.Fatalf("VACUUM INTO: %v", err)
	}
	backups = append(backups, vacuumed)
	if sqlite3, err := exec.LookPath("sqlite3"); err == nil {
		shell := filepath.Join(dir, "dot-backup.db")
		out, err := exec.Command(sqlite3, db, ".timeout 5000", ".backup '"+shell+"'").CombinedOutput()
		if err != nil {
			t.Fatalf("sqlite3 .backup: %v\n%s", err, out)
		}
		backups = append(backups, shell)
	} else {
		t.Log("no sqlite3 shell installed: only VACUUM INTO is checked")
	}
	close(stop)
	wg.Wait()
	if failed > 0 {
		t.Errorf("%d of %d requests failed while the backups ran", failed, sent)
	}
	g.Stop() // writes every queued row
	var final int
	if err := live.QueryRow(`SELECT COUNT(*) FROM request_logs`).Scan(&final); err != nil {
		t.Fatal(err)
	}

	for _, b := range backups {
		bdb, err := sql.Open("sqlite3", "file:"+b+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		var check string
		var keys, rows int
		if err := bdb.QueryRow(`PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
			t.Errorf("%s: integrity_check = %q, %v", filepath.Base(b), check, err)
		}
		if err := bdb.QueryRow(`SELECT COUNT(*) FROM keys`).Scan(&keys); err != nil || keys != len(pool) {
			t.Errorf("%s: %d keys (%v), want %d", filepath.Base(b), keys, err, len(pool))
		}
		if err := bdb.QueryRow(`SELECT COUNT(*) FROM request_logs`).Scan(&rows); err != nil || rows < before || rows > final {
			t.Errorf("%s: %d request rows (%v), want between %d (before the backup) and %d (at the end)",
				filepath.Base(b), rows, err, before, final)
		}
		bdb.Close()
	}
}
