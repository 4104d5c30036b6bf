#!/usr/bin/env bash
# Load benchmark (SPEC §11): tokengate's warm token path against nginx
# proxy_pass with no auth, on the same nginx upstream.
#
#   bash benches/load.sh                 # 3 rounds of 10 s per target
#   ROUNDS=5 SECONDS_PER_RUN=20 bash benches/load.sh
#
# The load generator (wrk, 1 thread, 64 keep-alive connections) runs on
# core 0; the upstream and the proxy under test share core 1. Targets
# alternate round by round so drift hits both alike. Also measured:
# tokengate with usage details and the audit log switched off (SPEC §6
# overhead). Everything runs on 127.0.0.1 and is stopped on exit.
source "$(dirname "$0")/lib.sh"
install_tools nginx wrk taskset curl

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-64}
UPSTREAM_PORT=${UPSTREAM_PORT:-18090}
NGINX_PORT=${NGINX_PORT:-18091}
GATEWAY_PORT=${GATEWAY_PORT:-18092}
LOAD_CORE=${LOAD_CORE:-0}
SERVER_CORE=${SERVER_CORE:-1}
PATH_QUERY="/rest/api/space?spaceKey=DOCS&limit=25"

start_upstream "$UPSTREAM_PORT" "$SERVER_CORE"
# The reference: nginx proxy_pass with pooled keep-alive upstream connections, no auth.
cat >"$WORK/nginx/proxy.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/proxy.pid;
error_log $WORK/nginx/proxy.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream confluence { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://confluence;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
taskset -c "$SERVER_CORE" nginx -c "$WORK/nginx/proxy.conf" -p "$WORK/nginx" &
PIDS+=($!)
wait_for "http://127.0.0.1:$NGINX_PORT/"

# tokengate: one worker (the current-thread scheduler) on the server core, logs at warn (nginx logs nothing either).
export TOKENGATE_DATABASE_URL="sqlite://$WORK/tokengate.db"
export RUST_LOG=warn TOKENGATE_WORKERS=1
RULES='[get].*/rest/api/space.*[QueryParam::spaceKey==DOCS|PM.*]
[get].*/rest/api/content/[0-9]+
[post].*/rest/api/content/?[JsonData::type==page]'
TOKEN=$("$BIN" token create --label load --user bench --limit-to "$RULES")
ADMIN_TOKEN=$("$BIN" token create --label load-admin --user admin)
taskset -c "$SERVER_CORE" "$BIN" serve --listen "127.0.0.1:$GATEWAY_PORT" \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT" 2>"$WORK/gateway.log" &
GATEWAY_PID=$!
PIDS+=($GATEWAY_PID)
wait_for "http://127.0.0.1:$GATEWAY_PORT/tokengate/healthz"
AUTH="Authorization: Basic $(printf 'bench:%s' "$TOKEN" | base64 -w0)"
status=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "http://127.0.0.1:$GATEWAY_PORT$PATH_QUERY")
[ "$status" = 200 ] || { echo "token request answered $status" >&2; exit 1; }

settings() { # usageDetails auditLog
  curl -fsS -u "admin:$ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "{\"usageDetails\":$1,\"auditLog\":$2}" \
    "http://127.0.0.1:$GATEWAY_PORT/rest/extender/1.0/tokenTools/set" >/dev/null
}

# One wrk run; prints "requests/s p50_ms p99_ms errors".
run() { # url [header]
  local out
  if [ $# -gt 1 ]; then
    out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -H "$2" "$1")
  else
    out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "$1")
  fi
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps = $2 }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /Non-2xx|Socket errors/ { errors = errors $0 " " }
    END { printf "%.0f %.3f %.3f %s\n", rps, p50, p99, (errors == "" ? "-" : errors) }
  ' <<<"$out"
}

declare -A RPS P50 P99
record() { # name result
  read -r rps p50 p99 errors <<<"$2"
  RPS[$1]+="$rps "
  P50[$1]+="$p50 "
  P99[$1]+="$p99 "
  printf '  %-26s %9s req/s  p50 %7s ms  p99 %7s ms  %s\n' "$1" "$rps" "$p50" "$p99" "$errors" >&2
}

echo "warming up" >&2
run "http://127.0.0.1:$NGINX_PORT$PATH_QUERY" >/dev/null
run "http://127.0.0.1:$GATEWAY_PORT$PATH_QUERY" "$AUTH" >/dev/null
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  record "nginx proxy_pass" "$(run "http://127.0.0.1:$NGINX_PORT$PATH_QUERY")"
  settings true true
  record "tokengate (usage+audit)" "$(run "http://127.0.0.1:$GATEWAY_PORT$PATH_QUERY" "$AUTH")"
  settings false false
  record "tokengate (recording off)" "$(run "http://127.0.0.1:$GATEWAY_PORT$PATH_QUERY" "$AUTH")"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "medians over $ROUNDS rounds of ${SECONDS_PER_RUN}s, $CONNECTIONS connections, wrk on core $LOAD_CORE, servers on core $SERVER_CORE:"
printf '| %-26s | %10s | %8s | %8s | %14s |\n' target "req/s" "p50 ms" "p99 ms" "vs nginx req/s"
printf '|%s|%s|%s|%s|%s|\n' "----------------------------" "------------" "----------" "----------" "----------------"
base=$(median <<<"${RPS[nginx proxy_pass]}")
for name in "nginx proxy_pass" "tokengate (usage+audit)" "tokengate (recording off)"; do
  rps=$(median <<<"${RPS[$name]}")
  printf '| %-26s | %10s | %8s | %8s | %13.2fx |\n' "$name" "$rps" "$(median <<<"${P50[$name]}")" \
    "$(median <<<"${P99[$name]}")" "$(awk -v a="$rps" -v b="$base" 'BEGIN { print a / b }')"
done
echo
echo "gateway resident memory: $(awk '/VmRSS/ { print $2, $3 }' /proc/$GATEWAY_PID/status)"
