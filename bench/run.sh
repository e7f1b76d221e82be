#!/usr/bin/env bash
# `make bench`: the gateway against caddy's own reverse_proxy and the upstream alone, side by side.
#
# Builds caddy and the mock upstream, starts the mock on 127.0.0.1 and ONE caddy with two sites:
#   proxy    reverse_proxy to the mock (caddy's defaults)
#   gateway  gemini_synapse (request logging is always on) with a few pool keys on the mock
# and then measures, with bench/loadgen:
#   1. 1000 concurrent open SSE streams through gateway, then proxy: RSS of caddy, bytes/stream
#      (first, while the process is fresh, so the gateway's figure is not flattered by reused heap)
#   2. non-streaming generateContent at 50 keep-alive clients: direct, proxy, gateway, alternating
#      (and gateway_pg: a second caddy whose gemini_synapse keeps its state in PostgreSQL, when
#      Debian's postgresql is installed: a throwaway server on 127.0.0.1, started and stopped here)
#   3. SSE time to first event at 1 client: direct, proxy, gateway, alternating
#   4. go test -bench for the request-log writers (SQLite and PostgreSQL, rows/s), the key pick
#      (ns/op, allocs/op) and the propagation of a change between instances on PostgreSQL
# and checks that no request failed and that the gateway's database holds one request_logs row
# per request sent to it. Everything listens on 127.0.0.1; every process started is stopped.
#
# Knobs (environment): BENCH_ROUNDS=6 BENCH_DURATION=4s BENCH_WARMUP=500ms BENCH_CLIENTS=50
# BENCH_SSE_ROUNDS=3 BENCH_SSE_DURATION=3s BENCH_SSE_CLIENTS=1 BENCH_STREAMS=1000 BENCH_HOLD=5s
# BENCH_PROFILE=1 (CPU and allocation profiles of caddy under load, ~30 s more)
# BENCH_OUT=bin/bench (report and profiles) BENCH_KEEP=1 (keep the temp dir with logs and DB).
# Exit status: 0 when the checks pass (performance targets are reported, not enforced: the
# machine may be shared), 1 when a request failed or the row count is wrong.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${BENCH_ROUNDS:-6}
SSE_ROUNDS=${BENCH_SSE_ROUNDS:-3}
DURATION=${BENCH_DURATION:-4s}
WARMUP=${BENCH_WARMUP:-500ms}
CLIENTS=${BENCH_CLIENTS:-50}
SSE_DURATION=${BENCH_SSE_DURATION:-3s}
SSE_CLIENTS=${BENCH_SSE_CLIENTS:-1}
STREAMS=${BENCH_STREAMS:-1000}
HOLD=${BENCH_HOLD:-5s}
PROFILE=${BENCH_PROFILE:-0}
OUT=${BENCH_OUT:-bin/bench}

export CGO_ENABLED=1
started=$(date +%s)
log() { printf '== %s\n' "$*" >&2; }

log "building caddy, the mock upstream and the load generator"
make --no-print-directory build mock >&2
go build -o bin/loadgen ./bench/loadgen
if command -v sqlite3 >/dev/null; then
	count_rows() { sqlite3 -readonly "$1" 'SELECT count(*) FROM request_logs'; }
else
	go build -o bin/countrows ./bench/countrows
	count_rows() { bin/countrows -db "$1" -table request_logs; }
fi

mkdir -p "$OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/synapse-bench.XXXXXX")
metrics=$work/metrics.txt
report=$work/report.md
: >"$metrics"

mock_pid=""
caddy_pid=""
pg_caddy_pid=""
pg_dir=""
pg_bin=""
bg_pids=()

# stop PID SIGNAL SECONDS: signal a process we started, wait for it, SIGKILL after SECONDS.
stop() {
	local pid=$1 sig=$2 secs=$3 i
	[ -n "$pid" ] || return 0
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
	kill -"$sig" "$pid" 2>/dev/null || true
	for ((i = 0; i < secs * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "process $pid did not stop within ${secs}s; killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local pid
	for pid in "${bg_pids[@]}"; do stop "$pid" TERM 5; done
	stop "$caddy_pid" INT 30
	stop "$pg_caddy_pid" INT 30
	stop "$mock_pid" TERM 10
	if [ -n "$pg_dir" ]; then
		as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true
		rm -rf "$pg_dir"
	fi
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		echo "kept $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r MOCK_PORT PROXY_PORT GATEWAY_PORT ADMIN_PORT PG_PORT PG_GATEWAY_PORT PG_ADMIN_PORT <<<"$(bin/loadgen -free-ports 7)"
MOCK=http://127.0.0.1:$MOCK_PORT
PROXY=http://127.0.0.1:$PROXY_PORT
GATEWAY=http://127.0.0.1:$GATEWAY_PORT
ADMIN=http://127.0.0.1:$ADMIN_PORT
ACCESS_KEY=sk-bench-access-key-0123456789abcdef
GEN=/v1beta/models/gemini-2.5-flash:generateContent
SSE='/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse'

# start_mock EVENTS DELAY: (re)start the mock upstream with streams of EVENTS events DELAY apart.
start_mock() {
	stop "$mock_pid" TERM 10
	bin/mockupstream -listen "127.0.0.1:$MOCK_PORT" -stream-events "$1" -stream-delay "$2" >>"$work/mock.log" 2>&1 &
	mock_pid=$!
	bin/loadgen -mode wait -target "mock=$MOCK/" -d 10s
}

loadgen() { bin/loadgen -metrics "$metrics" -key "$ACCESS_KEY" -max-runtime 4m "$@"; }

cat >"$work/Caddyfile" <<EOF
{
	admin 127.0.0.1:$ADMIN_PORT
	persist_config off
	default_bind 127.0.0.1
	auto_https off
	gemini_synapse {
		database $work/synapse.db
		admin_key bench-admin-key-0123456789abcdef
		access_keys $ACCESS_KEY
		google_api_keys AIzaSyBENCH-pool-key-0001-aaaaaaaaaaaaaaa AIzaSyBENCH-pool-key-0002-bbbbbbbbbbbbbbb AIzaSyBENCH-pool-key-0003-ccccccccccccccc AIzaSyBENCH-pool-key-0004-ddddddddddddddd
		upstream $MOCK
	}
}

http://127.0.0.1:$PROXY_PORT {
	reverse_proxy 127.0.0.1:$MOCK_PORT
}

http://127.0.0.1:$GATEWAY_PORT {
	gemini_synapse
}
EOF

# A throwaway PostgreSQL for the gateway_pg site, when Debian's package is installed (initdb
# refuses root: as root it runs as the postgres user, in a directory that user owns).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
PG_URL=""
if [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ]; then
	log "starting a throwaway PostgreSQL on 127.0.0.1:$PG_PORT"
	pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/synapse-bench-pg.XXXXXX")
	chmod 755 "$pg_dir"
	if [ "$(id -u)" = 0 ]; then chown postgres "$pg_dir"; fi
	as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust --no-sync >"$work/pg.log" 2>&1
	as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -o "-h 127.0.0.1 -p $PG_PORT -k '' -c fsync=off -c synchronous_commit=off" start >>"$work/pg.log" 2>&1
	as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench >>"$work/pg.log" 2>&1
	PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/bench?sslmode=disable"
	count_pg_rows() { as_pg "$pg_bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench -At -c 'SELECT count(*) FROM request_logs'; }
	sed -e "s|admin 127.0.0.1:$ADMIN_PORT|admin 127.0.0.1:$PG_ADMIN_PORT|" -e "s|database $work/synapse.db|database $PG_URL|" \
		-e "s|http://127.0.0.1:$GATEWAY_PORT {|http://127.0.0.1:$PG_GATEWAY_PORT {|" "$work/Caddyfile" |
		awk -v proxy="http://127.0.0.1:$PROXY_PORT {" '$0 == proxy { skip = 1 } skip && $0 == "}" { skip = 0; next } !skip' >"$work/Caddyfile.pg"
else
	log "PostgreSQL is not installed: the gateway_pg run is left out (apt-get install postgresql)"
fi
PG_GATEWAY=http://127.0.0.1:$PG_GATEWAY_PORT

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# 1. Open streams: a slow mock (600 events, 500 ms apart: 5 minutes per stream).
log "starting the mock upstream (slow streams) and caddy"
start_mock 600 500ms
mkdir -p "$work/home"
HOME=$work/home XDG_DATA_HOME=$work/home XDG_CONFIG_HOME=$work/home \
	bin/caddy run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 &
caddy_pid=$!
for ((i = 0; i < 600; i++)); do
	grep -q 'serving initial configuration' "$work/caddy.log" && break
	kill -0 "$caddy_pid" 2>/dev/null || { cat "$work/caddy.log" >&2; echo "caddy exited" >&2; exit 1; }
	sleep 0.1
done
grep -q 'serving initial configuration' "$work/caddy.log" || { cat "$work/caddy.log" >&2; echo "caddy not ready after 60s" >&2; exit 1; }
bin/loadgen -mode wait -target "proxy=$PROXY/" -d 10s
bin/loadgen -mode wait -target "gateway=$GATEWAY/" -d 10s

log "warming up both sites, then holding $STREAMS streams through each"
loadgen -mode req -c 2 -d 1s -warmup 0 -target "gateway=$GATEWAY$GEN" -target "proxy=$PROXY$GEN" >/dev/null
loadgen -mode hold -streams "$STREAMS" -hold "$HOLD" -pid "$caddy_pid" -vars "$ADMIN/debug/vars" \
	-target "gateway=$GATEWAY$SSE" -target "proxy=$PROXY$SSE" >"$work/hold.md"

# 2 and 3. Throughput and time to first event: a fast mock (3 events, no delay).
log "restarting the mock upstream (fast streams)"
start_mock 3 0s
sleep 1 # let caddy's transports drop their idle connections to the old mock

pg_targets=()
if [ -n "$PG_URL" ]; then
	log "starting the second caddy (state in PostgreSQL)"
	HOME=$work/home XDG_DATA_HOME=$work/home XDG_CONFIG_HOME=$work/home \
		bin/caddy run --config "$work/Caddyfile.pg" --adapter caddyfile >"$work/caddy-pg.log" 2>&1 &
	pg_caddy_pid=$!
	bin/loadgen -mode wait -target "gateway_pg=$PG_GATEWAY/" -d 60s
	loadgen -mode req -c 2 -d 1s -warmup 0 -target "gateway_pg=$PG_GATEWAY$GEN" >/dev/null
	pg_targets=(-target "gateway_pg=$PG_GATEWAY$GEN" -ratio gateway_pg/gateway -ratio gateway_pg/proxy)
fi

log "non-streaming generateContent: $ROUNDS rounds x every target x $DURATION at $CLIENTS clients"
loadgen -mode req -c "$CLIENTS" -d "$DURATION" -warmup "$WARMUP" -rounds "$ROUNDS" -pid "$caddy_pid" -pid-targets proxy,gateway \
	-target "direct=$MOCK$GEN" -target "proxy=$PROXY$GEN" -target "gateway=$GATEWAY$GEN" "${pg_targets[@]}" \
	-ratio gateway/proxy -ratio gateway/direct -ratio proxy/direct >"$work/req.md"

log "SSE time to first event: $SSE_ROUNDS rounds x 3 targets x $SSE_DURATION at $SSE_CLIENTS client(s)"
loadgen -mode sse -c "$SSE_CLIENTS" -d "$SSE_DURATION" -warmup 500ms -rounds "$SSE_ROUNDS" -base direct \
	-target "direct=$MOCK$SSE" -target "proxy=$PROXY$SSE" -target "gateway=$GATEWAY$SSE" >"$work/sse.md"

if [ "$PROFILE" = 1 ]; then
	for t in gateway proxy; do
		url=$GATEWAY
		[ "$t" = proxy ] && url=$PROXY
		log "profiling caddy for 10 s under load on $t"
		loadgen -mode req -c "$CLIENTS" -d 12s -warmup 0 -target "$t=$url$GEN" >/dev/null &
		bg_pids+=($!)
		sleep 1
		go tool pprof -proto -output "$OUT/$t.cpu.pprof" "$ADMIN/debug/pprof/profile?seconds=10" 2>/dev/null &
		cpu_job=$!
		go tool pprof -proto -output "$OUT/$t.allocs.pprof" "$ADMIN/debug/pprof/allocs?seconds=10" 2>/dev/null || true
		wait "$cpu_job" || true
		wait "${bg_pids[-1]}"
		unset 'bg_pids[-1]'
		go tool pprof -top -nodecount 30 bin/caddy "$OUT/$t.cpu.pprof" >"$OUT/$t.cpu.txt" 2>/dev/null || true
		go tool pprof -top -nodecount 30 -sample_index alloc_space bin/caddy "$OUT/$t.allocs.pprof" >"$OUT/$t.allocs.txt" 2>/dev/null || true
	done
fi

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
peak_rss=$(awk '/^VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$caddy_pid/status")

# Stop caddy gracefully: the request-log writer commits what is queued before it exits.
log "stopping caddy (flushes the request log)"
stop "$caddy_pid" INT 30
caddy_pid=""
stop "$pg_caddy_pid" INT 30
pg_caddy_pid=""
stop "$mock_pid" TERM 10
mock_pid=""

log "go test -bench: request-log writer and key pick"
pg_bench=()
if [ -n "$PG_URL" ]; then pg_bench=(./store/postgres/); fi
go test -run '^$' -bench 'LogRequest|Next|ClusterPropagation' -benchmem -count 1 ./store/sqlite/ ./keypool/ "${pg_bench[@]}" >"$work/gobench.txt" 2>&1 || {
	cat "$work/gobench.txt" >&2
	echo "go test -bench failed" >&2
	exit 1
}

# --- Checks -----------------------------------------------------------------------------------
metric() { awk -v k="$1" '$1 == k { v = $2 } END { print v }' "$metrics"; }
sum() { awk -v k="$1" '$1 == k { s += $2 } END { printf "%d", s }' "$metrics"; }
errors=$(awk '$1 ~ /^errors\./ { s += $2 } END { printf "%d", s }' "$metrics")
sent_gateway=$(sum sent.gateway)
rows=$(count_rows "$work/synapse.db")
sent_pg=$(sum sent.gateway_pg)
pg_rows=""
ok_pg=1
if [ -n "$PG_URL" ]; then
	pg_rows=$(count_pg_rows)
	[ "$pg_rows" = "$sent_pg" ] || ok_pg=0
fi
panics=$(grep -c -i 'panic' "$work/caddy.log" || true)
caddy_errors=$(grep -c '"level":"error"' "$work/caddy.log" || true)
ok=1
[ "$ok_pg" = 1 ] || ok=0
[ "$errors" = 0 ] || ok=0
[ "$rows" = "$sent_gateway" ] || ok=0
[ "$panics" = 0 ] || ok=0

# --- Targets ----------------------------------------------------------------------------------
# bench_metric PKG BENCH UNIT: the value of UNIT in BENCH's line of package PKG.
bench_metric() { awk -v pkg="$1" -v b="$2" -v u="$3" '/^pkg: / { p = index($0, pkg) > 0 } p && index($1, b) == 1 { for (i = 2; i <= NF; i++) if ($i == u) v = $(i-1) } END { print v }' "$work/gobench.txt"; }
rows_per_s=$(bench_metric store/sqlite BenchmarkLogRequest rows/s)
pg_rows_per_s=$(bench_metric store/postgres BenchmarkLogRequest rows/s)
prop99=$(bench_metric store/postgres BenchmarkClusterPropagation p99-µs)
prop99=$(awk -v v="$prop99" 'BEGIN { if (v != "") printf "%.2f", v / 1000 }')
pg_ratio=$(metric req.ratio.gateway_pg_gateway.rps)
# pick KEYS FIELD: ns/op or allocs/op of BenchmarkNext/keys=KEYS.
pick() { awk -v k="BenchmarkNext/keys=$1-" -v f="$2" 'index($1, k) == 1 { for (i = 2; i <= NF; i++) if ($i == f) v = $(i-1) } END { print v }' "$work/gobench.txt"; }
# verdict VALUE OP LIMIT: "met" or "missed"
verdict() { awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN { if (v == "") { print "n/a"; exit } m = (op == ">=") ? v >= l : (op == "<=") ? v <= l : v < l; print (m ? "met" : "**missed**") }'; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "") print "n/a"; else printf f, v }'; }

rps_ratio=$(metric req.ratio.gateway_proxy.rps)
p99_ratio=$(metric req.ratio.gateway_proxy.p99)
added50=$(metric sse.added.gateway.p50_ms)
added99=$(metric sse.added.gateway.p99_ms)
per_stream=$(metric hold.gateway.bytes_per_stream)
ns10=$(pick 10 ns/op)
ns1k=$(pick 1000 ns/op)
ns100k=$(pick 100000 ns/op)
allocs=$(awk '/^BenchmarkNext\/keys=/ { for (i = 2; i <= NF; i++) if ($i == "allocs/op") s += $(i-1) } END { print s + 0 }' "$work/gobench.txt")
ns_max=$(printf '%s\n' "$ns10" "$ns1k" "$ns100k" | sort -g | tail -1)
flat=$(awk -v a="$ns10" -v b="$ns100k" 'BEGIN { if (a > 0) printf "%.2f", b / a }')

{
	echo "# make bench: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "Machine: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(go version | cut -d' ' -f3-), caddy $(bin/caddy version | cut -d' ' -f1)."
	echo "Load average (1/5/15 min) before: $load_before, after: $load_after (other work on the machine adds noise; compare ratios of the same round)."
	echo
	echo "## Throughput and latency"
	echo
	cat "$work/req.md"
	echo
	echo "## SSE: time to first event"
	echo
	cat "$work/sse.md"
	echo
	echo "## Open streams"
	echo
	cat "$work/hold.md"
	echo
	echo "Peak RSS of the caddy process over the whole run (VmHWM): $peak_rss."
	echo
	echo "## Components (go test -bench)"
	echo
	echo '```'
	grep -E '^(Benchmark|goos|cpu)' "$work/gobench.txt"
	echo '```'
	echo
	echo "## Checks"
	echo
	echo "| check | result |"
	echo "|---|---|"
	echo "| failed requests (all phases, all targets) | $errors $([ "$errors" = 0 ] && echo ok || echo '**FAILED**') |"
	echo "| request_logs rows == requests sent to the gateway | $rows rows, $sent_gateway sent $([ "$rows" = "$sent_gateway" ] && echo ok || echo '**FAILED**') |"
	if [ -n "$PG_URL" ]; then
		echo "| PostgreSQL request_logs rows == requests sent to gateway_pg | $pg_rows rows, $sent_pg sent $([ "$ok_pg" = 1 ] && echo ok || echo '**FAILED**') |"
	fi
	echo "| panics in caddy's log | $panics $([ "$panics" = 0 ] && echo ok || echo '**FAILED**') |"
	echo "| error-level lines in caddy's log | $caddy_errors |"
	echo
	echo "## Targets"
	echo
	echo "| target | measured | verdict |"
	echo "|---|---|---|"
	echo "| gateway/proxy throughput >= 1.0 (reach 1.2) | $(fmt "$rps_ratio" %.2f) | $(verdict "$rps_ratio" '>=' 1.0) |"
	echo "| gateway p99 <= 1.1 x proxy p99 | $(fmt "$p99_ratio" %.2f) x | $(verdict "$p99_ratio" '<=' 1.1) |"
	echo "| added time to first SSE event < 1 ms (gateway - direct, judged on p50) | p50 $(fmt "$added50" %.3f) ms, p99 $(fmt "$added99" %.3f) ms | $(verdict "$added50" '<' 1) |"
	echo "| <= 64 KiB per open stream | $(fmt "$per_stream" %.0f) B ($(awk -v v="$per_stream" 'BEGIN { printf "%.1f", v / 1024 }') KiB) | $(verdict "$per_stream" '<=' 65536) |"
	echo "| >= 50k log rows/s (SQLite) | $(fmt "$rows_per_s" %.0f) rows/s | $(verdict "$rows_per_s" '>=' 50000) |"
	if [ -n "$PG_URL" ]; then
		echo "| >= 50k log rows/s (PostgreSQL, COPY) | $(fmt "$pg_rows_per_s" %.0f) rows/s | $(verdict "$pg_rows_per_s" '>=' 50000) |"
		echo "| gateway on PostgreSQL >= 0.9 x gateway on SQLite (throughput) | $(fmt "$pg_ratio" %.2f) | $(verdict "$pg_ratio" '>=' 0.9) |"
		echo "| propagation between instances p99 < 200 ms | $(fmt "$prop99" %.2f) ms | $(verdict "$prop99" '<' 200) |"
	fi
	echo "| key pick <= 100 ns (10 / 1k / 100k keys) | $ns10 / $ns1k / $ns100k ns | $(verdict "$ns_max" '<=' 100) |"
	echo "| key pick 0 allocs | $allocs allocs/op in total | $(verdict "$allocs" '<=' 0) |"
	echo "| key pick flat in pool size (100k / 10 keys <= 1.5) | $flat x | $(verdict "$flat" '<=' 1.5) |"
	echo
	echo "Total time: $(($(date +%s) - started)) s."
} >"$report"

cp "$report" "$OUT/report.md"
cat "$report"
echo >&2
log "report written to $OUT/report.md"
if [ "$ok" != 1 ]; then
	echo "make bench: checks FAILED (see the Checks table)" >&2
	exit 1
fi
