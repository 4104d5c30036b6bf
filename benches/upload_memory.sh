#!/usr/bin/env bash
# Memory under a large upload (SPEC §11): a 1 GiB PUT through a token
# without JSON rules must grow the gateway's resident memory by less than
# 32 MiB, since bodies stream. Reports resident memory before, and the peak
# (VmHWM) after. `UPLOAD_MIB=4096 bash benches/upload_memory.sh` for more.
source "$(dirname "$0")/lib.sh"
install_tools nginx curl taskset

UPLOAD_MIB=${UPLOAD_MIB:-1024}
UPSTREAM_PORT=${UPSTREAM_PORT:-18190}
GATEWAY_PORT=${GATEWAY_PORT:-18192}

start_upstream "$UPSTREAM_PORT" 1
export TOKENGATE_DATABASE_URL="sqlite://$WORK/tokengate.db" RUST_LOG=warn
TOKEN=$("$BIN" token create --label upload --user bench --limit-to '[put].*/rest/api/content/[0-9]+/child/attachment' 2>/dev/null)
"$BIN" serve --listen "127.0.0.1:$GATEWAY_PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" 2>"$WORK/gateway.log" &
GATEWAY_PID=$!
PIDS+=($GATEWAY_PID)
wait_for "http://127.0.0.1:$GATEWAY_PORT/tokengate/healthz"
# Warm the token and the upstream pool first, so the peak is the upload's alone.
curl -fsS -o /dev/null -u "bench:$TOKEN" -X PUT --data-binary 'warm' \
  "http://127.0.0.1:$GATEWAY_PORT/rest/api/content/1/child/attachment"
# Reset the peak (VmHWM) the warm-up's argon2 check (19 MiB) just set.
echo 5 >"/proc/$GATEWAY_PID/clear_refs"
before=$(rss_kib $GATEWAY_PID)
start=$(date +%s.%N)
status=$(head -c "$((UPLOAD_MIB * 1024 * 1024))" /dev/zero |
  curl -sS -o /dev/null -w '%{http_code}' -u "bench:$TOKEN" -X PUT -T - \
    -H 'Content-Type: application/octet-stream' \
    "http://127.0.0.1:$GATEWAY_PORT/rest/api/content/1/child/attachment")
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
peak=$(peak_kib $GATEWAY_PID)
after=$(rss_kib $GATEWAY_PID)
[ "$status" = 200 ] || { echo "upload answered $status" >&2; exit 1; }
growth=$(((peak - before) / 1024))
echo "uploaded ${UPLOAD_MIB} MiB in ${elapsed} s through the gateway (HTTP $status)"
echo "resident memory: before $((before / 1024)) MiB, peak $((peak / 1024)) MiB, after $((after / 1024)) MiB"
echo "growth during the upload: ${growth} MiB (target: under 32 MiB)"
[ "$growth" -lt 32 ]
