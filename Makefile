# Gemini Synapse for Caddy. `make run` tries it, `make test` runs every test.
MODULE        := github.com/geminisynapse/caddy-gemini-synapse
CADDY_VERSION := v2.11.9
XCADDY        := go run github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5
# The module proxy does not know this (unpublished) module: resolve it locally, never over VCS.
export GOPRIVATE := $(MODULE)
export GOVCS     := github.com/geminisynapse:off
# mattn/go-sqlite3 needs cgo, which xcaddy turns off unless told.
export CGO_ENABLED := 1

GO_SOURCES := $(shell find . -name '*.go' -not -path './bin/*' 2>/dev/null) $(shell find admin/web -type f) go.mod go.sum

.PHONY: run build mock test vet unit e2e bench clean fuzz

run:
	./examples/run.sh

build: bin/caddy

bin/caddy: $(GO_SOURCES)
	$(XCADDY) build $(CADDY_VERSION) --output bin/caddy --with $(MODULE)=.

mock: bin/mockupstream

bin/mockupstream: $(GO_SOURCES)
	go build -o bin/mockupstream ./examples/mockupstream

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	go vet ./...

# Every test: vet, unit tests with the race detector, and the end-to-end suite against a
# caddy built once with xcaddy (bin/caddy), plus a one-iteration smoke run of the benchmarks.
test: vet bin/caddy
	SYNAPSE_CADDY_BIN=$(CURDIR)/bin/caddy go test -race -count=1 -timeout 30m ./...
	go test -run '^$$' -bench . -benchtime 1x ./keypool/ ./store/
	$(MAKE) fuzz

# The error classifier and the quota parser take Google's bytes (which quote the client's): each
# fuzz target runs for a bounded time from its corpus of real error bodies (FUZZTIME=2m for longer).
FUZZTIME ?= 15s
fuzz:
	go test -run '^$$' -fuzz '^FuzzClassify$$' -fuzztime $(FUZZTIME) ./keypool/
	go test -run '^$$' -fuzz '^FuzzQuota$$' -fuzztime $(FUZZTIME) ./keypool/

clean:
	rm -rf bin

# Load benchmark: the gateway against caddy's own reverse_proxy and the upstream alone, side by
# side, plus the log writer and key pick benchmarks (bench/run.sh; report in bin/bench/report.md).
bench:
	./bench/run.sh
