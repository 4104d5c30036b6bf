#!/usr/bin/env bash
# Load benchmark (SPEC §11): tokengate's warm token path against two
# references without auth on the same nginx upstream: nginx proxy_pass, and
# a bare hyper proxy (benches/bare_proxy.rs: hyper's HTTP/1 server and
# hyper-util's pooled legacy client, nothing else), which shows what the
# stack tokengate is built on costs by itself.
#
#   bash benches/load.sh                 # 3 rounds of 10 s per target, then callgrind
#   ROUNDS=5 SECONDS_PER_RUN=20 bash benches/load.sh
#   CALLGRIND=0 bash benches/load.sh     # skip the instruction counts
#
# req/s, p50, p99: the load generator (wrk, 1 thread, 64 keep-alive
# connections) runs on core 0; the upstream and the proxy under test share
# core 1. Targets alternate round by round so drift hits all alike; the table
# shows medians. Also measured: tokengate with usage details and the audit
# log switched off (SPEC §6 overhead).
#
# instr/req: after the rounds, each target runs once more, alone, under
# callgrind (valgrind) on core 1: started with instrumentation off
# (--instr-atstart=no: `callgrind_control -i` switches instrumentation, not
# collection, so with --collect-atstart=no it would count nothing), warmed
# with CALLGRIND_WARMUP requests, then instrumentation on (callgrind_control
# -i on, counters zeroed) for exactly CALLGRIND_REQUESTS requests of wrk's
# shape (request line, Host, the same headers) over CALLGRIND_CONNECTIONS new
# keep-alive connections, sent by a small python client on core 0; a second
# after the last answer the counts are dumped and the dump's total Ir is
# divided by the request count. This counts only the user-space instructions
# of the proxy process (all its threads), not the kernel's work for it
# (syscalls, TCP), nor the upstream's or the client's. Deferred work (the
# audit log's batched writes) is included; so are tokengate's periodic jobs
# that fall in the window (store polls: about 0.1 M instructions a second when
# idle, some 0.2% of its count).
# Unlike req/s the count barely moves between runs and does not depend on
# other load on the machine. nginx runs as one process (master_process off)
# so that the process under callgrind is the one doing the work; tokengate is
# started as for the rounds, its settings set through its admin API before
# the warm-up (a change applies at once in the process that takes it).
#
# Knobs: ROUNDS (3), SECONDS_PER_RUN (10), CONNECTIONS (64), CALLGRIND (1; 0
# skips it), CALLGRIND_REQUESTS (5000), CALLGRIND_WARMUP (500),
# CALLGRIND_CONNECTIONS (8), CALLGRIND_OUT (a directory to keep the dumps in,
# for callgrind_annotate), LOAD_CORE (0), SERVER_CORE (1), and the ports
# UPSTREAM_PORT, NGINX_PORT, GATEWAY_PORT, BARE_PORT, CALLGRIND_PORT (the
# first of four). Everything runs on 127.0.0.1 and is stopped on exit.
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-64}
CALLGRIND=${CALLGRIND:-1}
CALLGRIND_REQUESTS=${CALLGRIND_REQUESTS:-5000}
CALLGRIND_WARMUP=${CALLGRIND_WARMUP:-500}
CALLGRIND_CONNECTIONS=${CALLGRIND_CONNECTIONS:-8}
CALLGRIND_OUT=${CALLGRIND_OUT:-}
UPSTREAM_PORT=${UPSTREAM_PORT:-18090}
NGINX_PORT=${NGINX_PORT:-18091}
GATEWAY_PORT=${GATEWAY_PORT:-18092}
BARE_PORT=${BARE_PORT:-18093}
CALLGRIND_PORT=${CALLGRIND_PORT:-18094}
LOAD_CORE=${LOAD_CORE:-0}
SERVER_CORE=${SERVER_CORE:-1}
PATH_QUERY="/rest/api/space?spaceKey=DOCS&limit=25"

install_tools nginx wrk taskset curl python3
[ "$CALLGRIND" = 0 ] || install_tools valgrind

# The bare hyper proxy: a bench target, built with the release profile's settings (lto = "fat").
BARE=$(cargo bench --locked --bench bare_proxy --no-run --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "bare_proxy" and message.get("executable"):
        print(message["executable"])
')
[ -x "$BARE" ] || { echo "cannot find the bare_proxy executable" >&2; exit 1; }

start_upstream "$UPSTREAM_PORT" "$SERVER_CORE"

# The reference: nginx proxy_pass with pooled keep-alive upstream connections, no auth.
nginx_proxy() { # name port [main-context directives]
  cat >"$WORK/nginx/$1.conf" <<EOF
${3:-}
worker_processes 1;
daemon off;
pid $WORK/nginx/$1.pid;
error_log $WORK/nginx/$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream confluence { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$2;
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
}
nginx_proxy proxy "$NGINX_PORT"
taskset -c "$SERVER_CORE" nginx -c "$WORK/nginx/proxy.conf" -p "$WORK/nginx" &
PIDS+=($!)
wait_for "http://127.0.0.1:$NGINX_PORT/"

# The bare hyper proxy: one current-thread runtime on the server core.
taskset -c "$SERVER_CORE" "$BARE" --listen "127.0.0.1:$BARE_PORT" --upstream "127.0.0.1:$UPSTREAM_PORT" &
PIDS+=($!)
wait_for "http://127.0.0.1:$BARE_PORT/"

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

settings() { # usageDetails auditLog [port]; applies at once in the gateway on that port
  curl -fsS -u "admin:$ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "{\"usageDetails\":$1,\"auditLog\":$2}" \
    "http://127.0.0.1:${3:-$GATEWAY_PORT}/rest/extender/1.0/tokenTools/set" >/dev/null
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

declare -A RPS P50 P99 INSTR
record() { # name result
  read -r rps p50 p99 errors <<<"$2"
  RPS[$1]+="$rps "
  P50[$1]+="$p50 "
  P99[$1]+="$p99 "
  printf '  %-26s %9s req/s  p50 %7s ms  p99 %7s ms  %s\n' "$1" "$rps" "$p50" "$p99" "$errors" >&2
}

echo "warming up" >&2
run "http://127.0.0.1:$NGINX_PORT$PATH_QUERY" >/dev/null
run "http://127.0.0.1:$BARE_PORT$PATH_QUERY" >/dev/null
run "http://127.0.0.1:$GATEWAY_PORT$PATH_QUERY" "$AUTH" >/dev/null
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  record "nginx proxy_pass" "$(run "http://127.0.0.1:$NGINX_PORT$PATH_QUERY")"
  record "bare hyper proxy" "$(run "http://127.0.0.1:$BARE_PORT$PATH_QUERY")"
  settings true true
  record "tokengate (usage+audit)" "$(run "http://127.0.0.1:$GATEWAY_PORT$PATH_QUERY" "$AUTH")"
  settings false false
  record "tokengate (recording off)" "$(run "http://127.0.0.1:$GATEWAY_PORT$PATH_QUERY" "$AUTH")"
done
GATEWAY_RSS=$(awk '/VmRSS/ { print $2, $3 }' /proc/$GATEWAY_PID/status)

if [ "$CALLGRIND" != 0 ]; then
  # Exactly COUNT GETs of wrk's shape over CONNS keep-alive HTTP/1.1
  # connections; fails unless every answer is a 200.
  cat >"$WORK/send.py" <<'PY'
import socket, sys, threading

host, port, target, count, conns = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
request = "".join(f"{line}\r\n" for line in [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", *sys.argv[6:], ""])
request = request.encode()
failures = []


def response(sock, buf):
    """Reads one response (Content-Length or chunked body); returns its status and what follows it."""

    def more(buf):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        return buf + chunk

    while b"\r\n\r\n" not in buf:
        buf = more(buf)
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {name.strip().lower(): value.strip().lower() for name, _, value in (l.partition(":") for l in lines[1:])}
    if fields.get("transfer-encoding") == "chunked":
        while True:
            while b"\r\n" not in buf:
                buf = more(buf)
            size, _, buf = buf.partition(b"\r\n")
            size = int(size.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf = more(buf)
            buf = buf[size + 2 :]
            if size == 0:
                break
    else:
        length = int(fields.get("content-length", "0"))
        while len(buf) < length:
            buf = more(buf)
        buf = buf[length:]
    return int(lines[0].split()[1]), buf


def client(n):
    try:
        with socket.create_connection((host, port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            for _ in range(n):
                sock.sendall(request)
                status, buf = response(sock, buf)
                if status != 200:
                    failures.append(f"answered {status}")
    except Exception as e:
        failures.append(repr(e))


threads = [threading.Thread(target=client, args=(count // conns + (i < count % conns),)) for i in range(conns)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
if failures:
    sys.exit(f"{len(failures)} of {count} requests failed, the first: {failures[0]}")
PY
  send() { # port count [header]
    taskset -c "$LOAD_CORE" python3 "$WORK/send.py" 127.0.0.1 "$1" "$PATH_QUERY" "$2" "$CALLGRIND_CONNECTIONS" "${@:3}"
  }

  # Starts command under callgrind on the server core, instrumentation off; sets CG_PID and CG_OUT.
  cg_start() { # name ready_url command...
    CG_OUT="$WORK/callgrind/$1"
    local ready=$2
    shift 2
    mkdir -p "$WORK/callgrind"
    taskset -c "$SERVER_CORE" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$CG_OUT.out" \
      --log-file="$CG_OUT.valgrind.log" "$@" 2>"$CG_OUT.stderr" &
    CG_PID=$!
    PIDS+=($CG_PID)
    wait_for "$ready" 120
  }
  cg_control() { # callgrind_control option
    timeout 120 callgrind_control "$1" "$CG_PID" >"$CG_OUT.control" 2>&1 || { cat "$CG_OUT.control" >&2; return 1; }
  }
  # Warms the process up, counts CALLGRIND_REQUESTS requests, and stops it; sets INSTR[name].
  cg_measure() { # name port [header]
    # A second after each batch: the deferred work (audit writes) is done within half of one.
    send "$2" "$CALLGRIND_WARMUP" "${@:3}"
    sleep 1
    cg_control --instr=on
    cg_control --zero
    send "$2" "$CALLGRIND_REQUESTS" "${@:3}"
    sleep 1
    cg_control --dump
    INSTR[$1]=$(awk -v n="$CALLGRIND_REQUESTS" '/^summary:/ { total += $2; dumps++ }
      END { if (!dumps) exit 1; printf "%.0f\n", total / n }' "$CG_OUT".out.*)
    if [ -n "$CALLGRIND_OUT" ]; then mkdir -p "$CALLGRIND_OUT" && cp "$CG_OUT".out.* "$CALLGRIND_OUT/"; fi
    kill "$CG_PID" # tokengate shuts down gracefully: give it 30 s
    for _ in $(seq 1 300); do
      grep -qs '^State:[[:space:]]*[^Z]' "/proc/$CG_PID/status" || break
      sleep 0.1
    done
    kill -9 "$CG_PID" 2>/dev/null || true
    wait "$CG_PID" || true
    local kept=() pid
    for pid in "${PIDS[@]}"; do [ "$pid" = "$CG_PID" ] || kept+=("$pid"); done
    PIDS=("${kept[@]}")
    printf '  %-26s %9s instr/req\n' "$1" "${INSTR[$1]}" >&2
  }

  echo "callgrind: $CALLGRIND_REQUESTS requests per target after $CALLGRIND_WARMUP to warm up" >&2
  started=$(date +%s)
  nginx_proxy callgrind "$CALLGRIND_PORT" "master_process off;"
  cg_start nginx "http://127.0.0.1:$CALLGRIND_PORT/" nginx -c "$WORK/nginx/callgrind.conf" -p "$WORK/nginx"
  cg_measure "nginx proxy_pass" "$CALLGRIND_PORT"
  port=$((CALLGRIND_PORT + 1))
  cg_start bare "http://127.0.0.1:$port/" "$BARE" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$UPSTREAM_PORT"
  cg_measure "bare hyper proxy" "$port"
  port=$((CALLGRIND_PORT + 2))
  cg_start tokengate-recording "http://127.0.0.1:$port/tokengate/healthz" "$BIN" serve \
    --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$UPSTREAM_PORT"
  settings true true "$port"
  cg_measure "tokengate (usage+audit)" "$port" "$AUTH"
  port=$((CALLGRIND_PORT + 3))
  cg_start tokengate-off "http://127.0.0.1:$port/tokengate/healthz" "$BIN" serve \
    --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$UPSTREAM_PORT"
  settings false false "$port"
  cg_measure "tokengate (recording off)" "$port" "$AUTH"
  echo "callgrind stage: $(($(date +%s) - started)) s" >&2
fi

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "medians over $ROUNDS rounds of ${SECONDS_PER_RUN}s, $CONNECTIONS connections, wrk on core $LOAD_CORE, servers on core $SERVER_CORE;"
if [ "$CALLGRIND" != 0 ]; then
  echo "instr/req: callgrind, user-space instructions of the proxy process over $CALLGRIND_REQUESTS requests:"
else
  echo "instr/req: not measured (CALLGRIND=0):"
fi
printf '| %-26s | %10s | %8s | %8s | %10s | %14s |\n' target "req/s" "p50 ms" "p99 ms" "instr/req" "vs nginx req/s"
printf '|%s|%s|%s|%s|%s|%s|\n' "----------------------------" "------------" "----------" "----------" "------------" "----------------"
base=$(median <<<"${RPS[nginx proxy_pass]}")
for name in "nginx proxy_pass" "bare hyper proxy" "tokengate (usage+audit)" "tokengate (recording off)"; do
  rps=$(median <<<"${RPS[$name]}")
  printf '| %-26s | %10s | %8s | %8s | %10s | %13.2fx |\n' "$name" "$rps" "$(median <<<"${P50[$name]}")" \
    "$(median <<<"${P99[$name]}")" "${INSTR[$name]:--}" "$(awk -v a="$rps" -v b="$base" 'BEGIN { print a / b }')"
done
echo
echo "gateway resident memory after the rounds: $GATEWAY_RSS"
