#!/usr/bin/env bash
# Scale (SPEC §11): with 100 000 tokens in the store, start-up under 2 s and
# the warm path unchanged. Filler tokens are written straight into SQLite
# (argon2 for each would take an hour; their hashes never match anything);
# one real token is created with the CLI and used for the load.
#   TOKENS=100000 bash benches/scale.sh
source "$(dirname "$0")/lib.sh"
install_tools nginx curl wrk taskset python3

TOKENS=${TOKENS:-100000}
UPSTREAM_PORT=${UPSTREAM_PORT:-18290}
GATEWAY_PORT=${GATEWAY_PORT:-18292}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}

start_upstream "$UPSTREAM_PORT" 1
export TOKENGATE_DATABASE_URL="sqlite://$WORK/tokengate.db" RUST_LOG=warn TOKENGATE_WORKERS=1
"$BIN" migrate >/dev/null
python3 - "$WORK/tokengate.db" "$TOKENS" <<'PY'
import secrets, sqlite3, string, sys, time
db, count = sys.argv[1], int(sys.argv[2])
alphabet = string.ascii_letters + string.digits
phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$ZmlsbGVyZmlsbGVyZmlsbGVyZmlsbGVyZmlsbGVy"
now = int(time.time() * 1000)
rows = []
for i in range(count):
    value = "tgw_" + "".join(secrets.choice(alphabet) for _ in range(40))
    rows.append((f"filler{i:07d}", f"filler {i}", f"user{i % 5000}", "bench", "", "", now, None, phc, value[:12]))
with sqlite3.connect(db) as conn:
    conn.executemany(
        "INSERT INTO tokens (id, label, user_name, author, limit_to, ip, created_at, valid_until, token_hash, lookup)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
PY
TOKEN=$("$BIN" token create --label scale --user bench --limit-to '[get].*/rest/api/space.*[QueryParam::spaceKey==DOCS]' 2>/dev/null)
echo "tokens in the store: $(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from tokens').fetchone()[0])" "$WORK/tokengate.db")"

start=$(date +%s%N)
taskset -c 1 "$BIN" serve --listen "127.0.0.1:$GATEWAY_PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" 2>"$WORK/gateway.log" &
PIDS+=($!)
until curl -fsS -o /dev/null "http://127.0.0.1:$GATEWAY_PORT/tokengate/readyz" 2>/dev/null; do sleep 0.005; done
ready_ms=$((($(date +%s%N) - start) / 1000000))
echo "start-up to ready: ${ready_ms} ms (target: under 2000 ms)"

URL="http://127.0.0.1:$GATEWAY_PORT/rest/api/space?spaceKey=DOCS"
AUTH="Authorization: Basic $(printf 'bench:%s' "$TOKEN" | base64 -w0)"
first=$(curl -s -o /dev/null -w '%{time_total}' -H "$AUTH" "$URL")
echo "first (cold, argon2) request: ${first} s"
taskset -c 0 wrk -t1 -c64 -d"${SECONDS_PER_RUN}s" --latency -H "$AUTH" "$URL" |
  awk '/Requests\/sec/ { print "warm path with '"$TOKENS"' tokens: " $2 " req/s" } /^ +99%/ { print "p99: " $2 }'
[ "$ready_ms" -lt 2000 ]
