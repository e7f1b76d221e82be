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
	go test -run '^$$' -bench . -benchtime 1x ./keypool/ ./store/sqlite/ ./store/postgres/ ./tenant/ ./internal/gateway/
	$(MAKE) fuzz

# The standing fuzz suite: every Fuzz* target of the module (found in *_test.go, so a new one
# joins by itself) runs from its seeds for FUZZTIME, one at a time: `make test` gives each 5 s
# (about 80 s in all), `make fuzz FUZZTIME=2m` longer. Each package's fuzzing test binary is
# built once (as `go test -fuzz` would build it, each time) and run in the package's
# directory, with go's own fuzz cache, so a failing input lands in its testdata/fuzz and
# `go test` replays it from then on. Minimizing each new input is capped (FUZZMINIMIZETIME):
# go's default of 60 s, spent on a large seed's every new input, stalls a short run.
FUZZTIME ?= 5s
FUZZMINIMIZETIME ?= 2s
FUZZ_TARGETS = $(shell grep -rHo --include='*_test.go' --exclude-dir=bin --exclude-dir=.git '^func Fuzz[A-Za-z0-9_]*' . | \
	sed -E 's|^\./||; s|^(([^:]*)/)?[^/:]*:func |\2:|; s|^:|.:|' | sort)
FUZZ_PKGS = $(sort $(foreach t,$(FUZZ_TARGETS),$(firstword $(subst :, ,$(t)))))
fuzz:
	@test -n "$(FUZZ_TARGETS)" || { echo "no fuzz targets found"; exit 1; }
	@mkdir -p bin/fuzz
	@set -e; for pkg in $(FUZZ_PKGS); do \
		go test -c -fuzz . -o "bin/fuzz/$$(echo $$pkg | tr / _).test" ./$$pkg/; \
	done
	@set -e; cache="$$(go env GOCACHE)/fuzz"; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; imp="$(MODULE)/$$pkg"; [ "$$pkg" != . ] || imp="$(MODULE)"; \
		echo "== $$name (./$$pkg, $(FUZZTIME))"; \
		(cd $$pkg && "$(CURDIR)/bin/fuzz/$$(echo $$pkg | tr / _).test" -test.run '^$$' -test.fuzz "^$$name$$" \
			-test.fuzztime $(FUZZTIME) -test.fuzzcachedir "$$cache/$$imp" -test.fuzzminimizetime $(FUZZMINIMIZETIME) -test.paniconexit0); \
	done

clean:
	rm -rf bin

# Load benchmark: the gateway against caddy's own reverse_proxy and the upstream alone, side by
# side, plus the log writer and key pick benchmarks (bench/run.sh; report in bin/bench/report.md).
bench:
	./bench/run.sh
