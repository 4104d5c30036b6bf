# Shared by the benchmark scripts: installs the tools, builds the release
# binary, starts an nginx stand-in for Confluence on 127.0.0.1, and cleans up.
# Source it; it sets BIN, WORK and a cleanup trap.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

install_tools() { # commands...
  local need=()
  for tool in "$@"; do
    case $tool in
      nginx) command -v nginx >/dev/null || need+=(nginx-light) ;;
      taskset) command -v taskset >/dev/null || need+=(util-linux) ;;
      *) command -v "$tool" >/dev/null || need+=("$tool") ;;
    esac
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

cargo build --release --locked --bin tokengate >&2
BIN=$PWD/target/release/tokengate
WORK=$(mktemp -d /tmp/tokengate-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # url [seconds, 10 by default]
  for _ in $(seq 1 $((${2:-10} * 20))); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "no answer from $1" >&2
  return 1
}

# nginx answering every path with a small JSON document (and discarding any
# request body), on 127.0.0.1:$1, pinned to core $2.
start_upstream() { # port core
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/upstream-$1.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx/upstream-$1.pid;
error_log $WORK/nginx/upstream-$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 0;
  server {
    listen 127.0.0.1:$1;
    default_type application/json;
    location / { return 200 '{"results":[{"key":"DOCS","name":"Documentation","type":"global"}],"size":1}'; }
  }
}
CONF
  taskset -c "$2" nginx -c "$WORK/nginx/upstream-$1.conf" -p "$WORK/nginx" &
  PIDS+=($!)
  wait_for "http://127.0.0.1:$1/"
}

# Resident memory of a process in KiB: current (VmRSS) or peak (VmHWM).
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
peak_kib() { awk '/VmHWM/ { print $2 }' "/proc/$1/status"; }
