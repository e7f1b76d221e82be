#!/usr/bin/env bash
# Builds caddy with the plugin and runs it with Caddyfile.example. Without GOOGLE_API_KEYS it
# also starts the mock Gemini upstream from examples/mockupstream and points the gateway at it.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory build mock

mock_pid=""
cleanup() { [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [ -z "${GOOGLE_API_KEYS:-}" ]; then
	port="${MOCK_PORT:-9999}"
	./bin/mockupstream -listen "127.0.0.1:$port" &
	mock_pid=$!
	export GEMINI_UPSTREAM="http://127.0.0.1:$port"
	export GOOGLE_API_KEYS="AIzaSyMOCK-key-one-aaaaaaaaaaaaaaaaaaaa,AIzaSyMOCK-key-two-bbbbbbbbbbbbbbbbbbbb,AIzaSyMOCK-key-three-cccccccccccccccccc"
	export SYNAPSE_DATABASE="${SYNAPSE_DATABASE:-./data/mock.db}"
	# A known admin key, for trying the panel; with real keys, caddy generates one and logs it once.
	export ADMIN_KEY="${ADMIN_KEY:-synapse-admin-try-me}"
	# A known access key too; with real keys a well-known one would open them to anyone.
	export ACCESS_KEYS="${ACCESS_KEYS:-sk-synapse-try-me}"
	echo "GOOGLE_API_KEYS is not set: using the mock Gemini upstream on $GEMINI_UPSTREAM (no Google key needed)."
fi
access="${ACCESS_KEYS:-}"
port="${SYNAPSE_PORT:-8008}"
echo "Gateway on http://localhost:$port."
if [ -n "${ADMIN_KEY:-}" ]; then
	echo "Admin panel: http://localhost:$port/admin/ (admin key: $ADMIN_KEY)"
else
	echo "Admin panel: http://localhost:$port/admin/ (at first start caddy logs a generated admin key once: look for \"no admin key was configured\" below)"
fi
if [ -z "$access" ]; then
	echo "ACCESS_KEYS is not set: create an access key in the admin panel (Access keys) and put it in the curl line below."
	access="<access key>"
fi
echo "Try:"
echo "  curl -s http://localhost:$port/v1beta/models/gemini-2.5-flash:generateContent -H 'x-goog-api-key: ${access%%,*}' -H 'Content-Type: application/json' -d '{\"contents\":[{\"parts\":[{\"text\":\"Hello\"}]}]}'"
./bin/caddy run --config Caddyfile.example --adapter caddyfile
