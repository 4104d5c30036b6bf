#!/usr/bin/env bash
# Soak test: the release gateway in front of a fake Confluence on loopback,
# under mixed traffic for SOAK_SECONDS (default 600): valid token requests,
# requests refused by rules, unknown and mistyped tokens (throttled per
# client IP), malformed Authorization, path tricks, oversized and
# duplicate-key JSON, slow and abandoned connections, password passthrough
# and anonymous requests. Reports responses by status and X-Tokengate-Reason,
# and the gateway's VmRSS and open fds at the start, every minute and at the
# end. Exits non-zero if the gateway died, if no valid token request
# succeeded, or if VmRSS or fds grew from the minute-1 sample to the final
# (idle) one by more than SOAK_MAX_RSS_GROWTH_KIB / SOAK_MAX_FD_GROWTH.
#
# History: the first runs (glibc malloc) climbed from ~10 MB to ~390 MB in
# 2-3 minutes and then stayed flat: argon2's 19 MiB block, freed on tokio's
# blocking threads, was kept by each thread's glibc arena. With mimalloc as
# the global allocator a 3-minute run stays at 39-40 MiB (+0.6 MiB).
#
# Traffic goes only to 127.0.0.1. Everything started here is stopped on exit.
#
#   benches/soak.sh                          # 10 minutes
#   SOAK_SECONDS=120 benches/soak.sh         # shorter
#
# Knobs: SOAK_SECONDS (600), SOAK_RATE (requests/s, 400), SOAK_WORKERS (6),
# SOAK_SLOW_CLIENTS (16 at a time), SOAK_MAX_RSS_GROWTH_KIB (32768),
# SOAK_MAX_FD_GROWTH (16), SOAK_BIN (use this binary, skip the build;
# not TOKENGATE_BIN: the gateway reads TOKENGATE_* as configuration),
# SOAK_KEEP=1 (keep the work directory: config, logs, database).
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_RATE=${SOAK_RATE:-400}
SOAK_WORKERS=${SOAK_WORKERS:-6}
SOAK_SLOW_CLIENTS=${SOAK_SLOW_CLIENTS:-16}
SOAK_MAX_RSS_GROWTH_KIB=${SOAK_MAX_RSS_GROWTH_KIB:-32768}
SOAK_MAX_FD_GROWTH=${SOAK_MAX_FD_GROWTH:-16}
HELPER=benches/soak.py

if [ -z "${SOAK_BIN:-}" ]; then
  echo "== building the release binary"
  cargo build --release --locked --bin tokengate
  SOAK_BIN=target/release/tokengate
fi
BIN=$(realpath "$SOAK_BIN")

WORK=$(mktemp -d /tmp/tokengate-soak.XXXXXX)
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "${SOAK_KEEP:-}" = 1 ]; then
    echo "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

UPSTREAM_PORT=$(python3 "$HELPER" free-port)
GATEWAY_PORT=$(python3 "$HELPER" free-port)

echo "== fake upstream on 127.0.0.1:$UPSTREAM_PORT"
if command -v nginx >/dev/null; then
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    location / {
      default_type application/json;
      return 200 '{"results":[],"size":0}';
    }
  }
}
EOF
  nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
  pids+=($!)
  echo "   (nginx)"
else
  python3 "$HELPER" upstream --port "$UPSTREAM_PORT" &
  pids+=($!)
  echo "   (python http.server; install nginx for a faster upstream)"
fi
python3 "$HELPER" wait --port "$UPSTREAM_PORT" --seconds 10 || {
  echo "the fake upstream did not start" >&2
  exit 1
}

CONFIG="$WORK/tokengate.toml"
cat >"$CONFIG" <<EOF
listen = "127.0.0.1:$GATEWAY_PORT"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
database_url = "sqlite://$WORK/tokengate.db"
# Small enough that "oversized" bodies stay cheap to send.
max_json_body = "64KiB"
# Short, so the cold path (store, argon2) and cache expiry run all along.
verify_cache_ttl_s = 60
failed_auth_per_minute = 20
EOF

echo "== creating tokens"
create() {
  "$BIN" token create --config "$CONFIG" "$@" 2>>"$WORK/cli.log"
}
OPEN=$(create --label soak-open --user alice)
RULES=$(create --label soak-rules --user bob \
  --limit-to '[get].*/rest/api/content.*[QueryParam::spaceKey==PM.*]\n[get].*/rest/api/space.*')
JSON=$(create --label soak-json --user carol --limit-to '[post].*/rest/api/content/?[JsonData::type==page]')
printf '{"open":"%s","rules":"%s","json":"%s"}\n' "$OPEN" "$RULES" "$JSON" >"$WORK/tokens.json"

echo "== starting the gateway on 127.0.0.1:$GATEWAY_PORT"
RUST_LOG=warn "$BIN" serve --config "$CONFIG" >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
pids+=("$GATEWAY_PID")
python3 "$HELPER" wait --port "$GATEWAY_PORT" --path /tokengate/readyz --seconds 30 || {
  echo "the gateway did not become ready:" >&2
  cat "$WORK/gateway.log" >&2
  exit 1
}

echo "== traffic for ${SOAK_SECONDS}s at about ${SOAK_RATE} requests/s"
status=0
python3 "$HELPER" traffic --port "$GATEWAY_PORT" --pid "$GATEWAY_PID" --tokens "$WORK/tokens.json" \
  --seconds "$SOAK_SECONDS" --rate "$SOAK_RATE" --workers "$SOAK_WORKERS" \
  --slow-clients "$SOAK_SLOW_CLIENTS" \
  --max-rss-growth-kib "$SOAK_MAX_RSS_GROWTH_KIB" --max-fd-growth "$SOAK_MAX_FD_GROWTH" || status=$?

if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
  echo "FAIL: the gateway is not running" >&2
  status=1
fi
# The log carries ANSI colours when the gateway thinks it may: strip them first.
sed -E 's/\x1b\[[0-9;]*m//g' "$WORK/gateway.log" >"$WORK/gateway.plain.log"
echo "== gateway log: $(grep -c '^[^ ]* *WARN ' "$WORK/gateway.plain.log" || true) warnings," \
  "$(grep -c '^[^ ]* *ERROR ' "$WORK/gateway.plain.log" || true) errors; most frequent:"
grep -E '^[^ ]* *(WARN|ERROR) |panicked' "$WORK/gateway.plain.log" | sed -E 's/^[^ ]* *//' | cut -c1-150 |
  sort | uniq -c | sort -rn | head -10 || true
if grep -q 'panicked' "$WORK/gateway.plain.log"; then
  echo "FAIL: the gateway panicked" >&2
  status=1
fi
exit "$status"
