// Command countrows prints the number of rows of one table of a gateway database. `make bench`
// uses it, when the sqlite3 command-line tool is missing, to check that every request sent to
// the gateway left exactly one request-log row:
//
//	countrows -db data.db -table request_logs
package main

import (
	"database/sql"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	_ "github.com/mattn/go-sqlite3"
)

// tables that may be counted; the name is put into SQL, so it is never taken from free text.
var tables = map[string]bool{"request_logs": true, "error_logs": true, "keys": true, "access_keys": true}

func main() {
	db := flag.String("db", "", "path of the SQLite database")
	table := flag.String("table", "request_logs", "table to count")
	flag.Parse()
	if *db == "" || !tables[*table] {
		fmt.Fprintln(os.Stderr, "usage: countrows -db <path> [-table request_logs|error_logs|keys|access_keys]")
		os.Exit(2)
	}
	path, err := filepath.Abs(*db)
	if err != nil {
		fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		fatal(err)
	}
	// Read-only: the count must not create or change anything.
	dsn := (&url.URL{Scheme: "file", Path: path, RawQuery: "mode=ro&_busy_timeout=5000"}).String()
	conn, err := sql.Open("sqlite3", dsn)
	if err != nil {
		fatal(err)
	}
	defer conn.Close()
	var n int64
	if err := conn.QueryRow("SELECT count(*) FROM " + *table).Scan(&n); err != nil {
		fatal(err)
	}
	fmt.Println(n)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "countrows:", err)
	os.Exit(1)
}
