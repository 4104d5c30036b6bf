#!/usr/bin/env python3
"""Helper of benches/soak.sh: a fake upstream, a readiness wait, and the
mixed soak traffic with its report. Standard library only.

Every socket it opens goes to 127.0.0.1; the "other clients" whose failed
token attempts the gateway throttles per IP are loopback source addresses
(127.0.0.2 and up), so nothing leaves the machine.
"""

import argparse
import base64
import http.client
import json
import os
import random
import select
import socket
import string
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# ---------------------------------------------------------------- helpers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url_host, port, path, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(url_host, port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return 0
        except OSError:
            pass
        time.sleep(0.2)
    return 1


class Upstream(BaseHTTPRequestHandler):
    """A Confluence stand-in: 200 with a small JSON body for everything."""

    protocol_version = "HTTP/1.1"
    body = b'{"results":[],"size":0}'

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

    def log_message(self, *args):
        pass


# ---------------------------------------------------------------- process sampling


def sample(pid):
    """(VmRSS in KiB, open fds) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


# ---------------------------------------------------------------- traffic

WORKER_TIMEOUT = 10


def basic(user, secret):
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def random_token():
    alphabet = string.ascii_letters + string.digits
    return "tgw_" + "".join(random.choice(alphabet) for _ in range(40))


def mistype(token):
    """Same lookup prefix (first 12 characters), so the gateway must run argon2."""
    last = token[-1]
    return token[:-1] + ("a" if last != "a" else "b")


class Worker:
    """Sends one scenario at a time on keep-alive connections, one per source address."""

    def __init__(self, port, tokens, counts, attacker_ips):
        self.port = port
        self.tokens = tokens
        self.counts = counts
        self.attacker_ips = attacker_ips
        self.conns = {}

    def conn(self, source):
        conn = self.conns.get(source)
        if conn is None:
            conn = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=WORKER_TIMEOUT, source_address=(source, 0)
            )
            self.conns[source] = conn
        return conn

    def drop(self, source):
        conn = self.conns.pop(source, None)
        if conn is not None:
            conn.close()

    def send(self, kind, method, path, headers=None, body=None, source="127.0.0.1", fresh=False, expect=()):
        """One request; counts `kind status reason` (or the exception) and whether it was expected."""
        if fresh:
            self.drop(source)
        conn = self.conn(source)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers or []:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            response.read()
            reason = response.getheader("X-Tokengate-Reason") or "-"
            outcome = f"{response.status} {reason}"
            if response.will_close or fresh:
                self.drop(source)
        except (OSError, http.client.HTTPException) as e:
            outcome = f"error {type(e).__name__}"
            self.drop(source)
        self.counts[(kind, outcome)] += 1
        if expect and not any(outcome.startswith(e) for e in expect):
            self.counts[("UNEXPECTED", f"{kind}: {outcome}")] += 1

    def attacker(self):
        return random.choice(self.attacker_ips)

    # Each scenario is one request (or one abandoned connection).

    def valid_open(self):
        auth = basic("alice", self.tokens["open"])
        path = random.choice(["/rest/api/space", "/rest/api/content/123", "/rest/api/./space?limit=10"])
        self.send("valid token", "GET", path, [("Authorization", auth)], expect=["200 -"])

    def rules_allowed(self):
        auth = basic("bob", self.tokens["rules"])
        self.send(
            "rules allowed", "GET", "/rest/api/content?spaceKey=PM1&expand=body", [("Authorization", auth)], expect=["200 -"]
        )

    def rules_refused(self):
        auth = basic("bob", self.tokens["rules"])
        method, path = random.choice([("GET", "/rest/api/content?spaceKey=DEV"), ("DELETE", "/rest/api/space/PM")])
        self.send("rules refused", method, path, [("Authorization", auth)], expect=["403 rule_mismatch"])

    def json_rules(self):
        auth = basic("carol", self.tokens["json"])
        kind, body, expect = random.choice(
            [
                ("json allowed", b'{"type":"page","title":"x","space":{"key":"DOCS"}}', "200 -"),
                ("json refused", b'{"type":"blogpost","title":"x"}', "403 rule_mismatch"),
                ("duplicate-key json", b'{"type":"page","space":{"key":"A","key":"B"}}', "400 ambiguous_json"),
            ]
        )
        headers = [("Authorization", auth), ("Content-Type", "application/json")]
        self.send(kind, "POST", "/rest/api/content", headers, body, expect=[expect])

    def json_oversized(self):
        auth = basic("carol", self.tokens["json"])
        body = b'{"type":"page","body":"' + b"x" * (100 * 1024) + b'"}'
        headers = [("Authorization", auth), ("Content-Type", "application/json")]
        # The gateway may close before reading it all: a reset is an expected outcome too.
        self.send(
            "oversized json", "POST", "/rest/api/content", headers, body, fresh=True, expect=["413 body_too_large", "error"]
        )

    def bad_token(self):
        kind, secret = random.choice(
            [("unknown token", random_token()), ("mistyped token", mistype(self.tokens["open"]))]
        )
        self.send(
            kind,
            "GET",
            "/rest/api/space",
            [("Authorization", basic("alice", secret))],
            source=self.attacker(),
            expect=["401 invalid_token", "429 too_many_failures"],
        )

    def wrong_user_or_scheme(self):
        kind, auth, expect = random.choice(
            [
                ("user mismatch", basic("mallory", self.tokens["open"]), "401 user_mismatch"),
                ("bearer not allowed", "Bearer " + self.tokens["open"], "401 scheme_not_allowed"),
            ]
        )
        self.send(
            kind, "GET", "/rest/api/space", [("Authorization", auth)], source=self.attacker(),
            expect=[expect, "429 too_many_failures"],
        )

    def malformed_auth(self):
        headers = random.choice(
            [
                [("Authorization", "Basic !!!not-base64")],
                [("Authorization", "Basic " + base64.b64encode(b"no-colon").decode())],
                [("Authorization", "Basic " + base64.b64encode(b"\xff\xfe:x").decode())],
                [("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
            ]
        )
        self.send("malformed authorization", "GET", "/rest/api/space", headers, expect=["400 bad_credentials"])

    def path_trick(self):
        auth = [("Authorization", basic("alice", self.tokens["open"]))]
        path, headers, expect = random.choice(
            [
                ("/rest/api/../../../etc/passwd", auth, "400 bad_path"),
                ("/rest/api/../../etc/passwd", auth, "403 out_of_scope"),
                ("/rest/%2e%2e/admin", auth, "400 bad_path"),
                ("/rest/api%2fspace", auth, "400 bad_path"),
                ("/rest/api%5Cspace", auth, "400 bad_path"),
                ("/rest/api/space%00", auth, "400 bad_path"),
                ("/rest/api/space/..;/admin", auth, "400 bad_path"),
                ("/rest/api/space;jsessionid=1", auth, "400 bad_path"),
                ("/rest/api/space;jsessionid=1", [], "200 -"),
                ("/rest/%61pi/./space/x/..", auth, "200 -"),
                ("/rest//api///space", auth, "200 -"),
                ("/admin/users", auth, "403 out_of_scope"),
            ]
        )
        self.send("path trick", "GET", path, headers, expect=[expect])

    def passthrough(self):
        kind, headers = random.choice(
            [("password passthrough", [("Authorization", basic("dave", "hunter2"))]), ("anonymous", [])]
        )
        self.send(kind, "GET", "/rest/api/space", headers, expect=["200 -"])

    def abandoned(self):
        """A connection opened and given up on: at once, mid-body, or before the response."""
        how = random.choice(["connect only", "half a body", "no read"])
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=WORKER_TIMEOUT) as s:
                if how == "half a body":
                    s.sendall(
                        b"POST /rest/api/content HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"type\":"
                    )
                elif how == "no read":
                    s.sendall(b"GET /rest/api/space HTTP/1.1\r\nHost: soak\r\n\r\n")
            self.counts[("abandoned connection", how)] += 1
        except OSError as e:
            self.counts[("abandoned connection", f"error {type(e).__name__}")] += 1


SCENARIOS = [
    # weight, method
    (30, Worker.valid_open),
    (10, Worker.rules_allowed),
    (8, Worker.rules_refused),
    (12, Worker.json_rules),
    (1, Worker.json_oversized),
    (6, Worker.bad_token),
    (4, Worker.wrong_user_or_scheme),
    (5, Worker.malformed_auth),
    (10, Worker.path_trick),
    (10, Worker.passthrough),
    (2, Worker.abandoned),
]


def run_worker(port, tokens, counts, attacker_ips, deadline, interval):
    worker = Worker(port, tokens, counts, attacker_ips)
    methods = [m for _, m in SCENARIOS]
    weights = [w for w, _ in SCENARIOS]
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        random.choices(methods, weights)[0](worker)
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1:
            next_at = time.monotonic()  # fell behind: do not burst to catch up
    for source in list(worker.conns):
        worker.drop(source)


def run_slow_clients(port, counts, deadline, at_most):
    """Keeps up to `at_most` clients that stop mid-header: some give up after
    a few seconds, the rest wait for the gateway to close them (its header
    read timeout), trickling a byte now and then or sending nothing more."""
    open_ = {}  # socket -> (opened at, give up at, trickle)
    while time.monotonic() < deadline:
        now = time.monotonic()
        while len(open_) < at_most:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET /rest/api/space HTTP/1.1\r\nHost: soak\r\nX-Slow: ")
                s.setblocking(False)
                patient = random.random() < 0.5
                open_[s] = (now, now + (60 if patient else random.uniform(1, 10)), random.random() < 0.5)
            except OSError as e:
                counts[("slow client", f"error {type(e).__name__}")] += 1
                break
        readable, _, _ = select.select(list(open_), [], [], 0.5)
        now = time.monotonic()
        for s in list(open_):
            opened, give_up, trickle = open_[s]
            waited = f"after {5 * round((now - opened) / 5)}s"
            if s in readable:
                try:
                    data = s.recv(4096)
                except OSError as e:
                    data = type(e).__name__.encode()
                first_line = data.split(b"\r\n")[0].decode(errors="replace")
                counts[("slow client", f"closed by gateway {waited}" if not data else f"{first_line} {waited}")] += 1
            elif now >= give_up:
                counts[("slow client", "gave up mid-header")] += 1
            else:
                if trickle and random.random() < 0.1:
                    try:
                        s.send(b"x")
                    except OSError:
                        pass
                continue
            s.close()
            del open_[s]
    for s in open_:
        s.close()
    counts[("slow client", "still open at the end")] += len(open_)


def print_metrics(port):
    """The gateway's own view: argon2 work, the verified cache, the audit queue."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/tokengate/metrics")
        text = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException) as e:
        print(f"metrics: {type(e).__name__}")
        return
    wanted = ("tokengate_argon2_checks_total", "tokengate_verified_cache_", "tokengate_audit_queue_depth ",
              "tokengate_argon2_duration_seconds_sum", "tokengate_argon2_duration_seconds_count")
    print("gateway metrics:")
    for line in text.splitlines():
        if line.startswith(wanted):
            print(f"  {line}")


def traffic(args):
    tokens = json.loads(open(args.tokens).read())
    attacker_ips = [f"127.0.0.{n}" for n in range(2, 2 + args.attacker_ips)]
    started = time.monotonic()
    deadline = started + args.seconds
    counts_per_thread = [Counter() for _ in range(args.workers + 1)]
    threads = [
        threading.Thread(
            target=run_worker,
            args=(args.port, tokens, counts_per_thread[i], attacker_ips, deadline, args.workers / args.rate),
            daemon=True,
        )
        for i in range(args.workers)
    ]
    threads.append(
        threading.Thread(
            target=run_slow_clients, args=(args.port, counts_per_thread[-1], deadline, args.slow_clients), daemon=True
        )
    )

    def total():
        merged = Counter()
        for c in counts_per_thread:
            merged.update(c.copy())
        return merged

    def served(merged):
        return sum(n for (kind, outcome), n in merged.items() if kind != "UNEXPECTED" and outcome[:1].isdigit())

    samples = []

    def take(label):
        s = sample(args.pid)
        elapsed = time.monotonic() - started
        if s is None:
            print(f"[{elapsed:6.0f}s] {label}: the gateway (pid {args.pid}) is gone", flush=True)
            return False
        samples.append((label, *s))
        n = served(total())
        print(f"[{elapsed:6.0f}s] {label}: VmRSS {s[0]} KiB, fds {s[1]}, responses so far {n}", flush=True)
        return True

    alive = take("start")
    for t in threads:
        t.start()
    minute = 1
    while alive and any(t.is_alive() for t in threads):
        next_sample = started + 60 * minute
        while time.monotonic() < next_sample and any(t.is_alive() for t in threads):
            time.sleep(0.5)
        if time.monotonic() >= next_sample:
            alive = take(f"minute {minute}")
            minute += 1
    for t in threads:
        t.join(timeout=1)
    if alive:
        time.sleep(3)  # let the gateway notice the last closed connections
        alive = take("end (idle)")

    if alive:
        print_metrics(args.port)
    merged = total()
    elapsed = time.monotonic() - started
    n = served(merged)
    print(f"\nresponses received: {n} in {elapsed:.0f}s ({n / elapsed:.0f}/s)")
    by_status = Counter()
    for (kind, outcome), count in merged.items():
        if kind not in ("UNEXPECTED", "slow client", "abandoned connection"):
            by_status[outcome] += count
    print("by status and X-Tokengate-Reason:")
    for outcome, count in sorted(by_status.items()):
        print(f"  {outcome:32} {count}")
    print("by scenario:")
    for (kind, outcome), count in sorted(merged.items()):
        if kind != "UNEXPECTED":
            print(f"  {kind:26} {outcome:32} {count}")
    unexpected = {k: v for k, v in merged.items() if k[0] == "UNEXPECTED"}
    print(f"unexpected outcomes: {sum(unexpected.values())}")
    for (_, what), count in sorted(unexpected.items()):
        print(f"  {what}: {count}")

    failures = []
    if not alive:
        failures.append("the gateway died")
    first = next((s for s in samples if s[0] == "minute 1"), None)
    last = samples[-1] if samples else None
    if alive and first and last and last is not first:
        rss_growth, fd_growth = last[1] - first[1], last[2] - first[2]
        print(
            f"growth from minute 1 to the end: VmRSS {rss_growth:+d} KiB (limit {args.max_rss_growth_kib}), "
            f"fds {fd_growth:+d} (limit {args.max_fd_growth})"
        )
        if rss_growth > args.max_rss_growth_kib:
            failures.append(f"VmRSS grew by {rss_growth} KiB")
        if fd_growth > args.max_fd_growth:
            failures.append(f"open fds grew by {fd_growth}")
    elif alive:
        print("the run was shorter than a minute: no growth check")
    if n == 0 or merged[("valid token", "200 -")] == 0:
        failures.append("no valid token request succeeded")
    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print("PASS")
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("free-port")
    up = sub.add_parser("upstream")
    up.add_argument("--port", type=int, required=True)
    wait = sub.add_parser("wait")
    wait.add_argument("--port", type=int, required=True)
    wait.add_argument("--path", default="/")
    wait.add_argument("--seconds", type=float, default=30)
    t = sub.add_parser("traffic")
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--pid", type=int, required=True)
    t.add_argument("--tokens", required=True, help="JSON file: {open, rules, json}")
    t.add_argument("--seconds", type=float, default=600)
    t.add_argument("--rate", type=float, default=400, help="requests per second, all workers together")
    t.add_argument("--workers", type=int, default=6)
    t.add_argument("--slow-clients", type=int, default=16)
    t.add_argument("--attacker-ips", type=int, default=16)
    t.add_argument("--max-rss-growth-kib", type=int, default=32768)
    t.add_argument("--max-fd-growth", type=int, default=16)
    args = parser.parse_args()
    if args.command == "free-port":
        print(free_port())
    elif args.command == "upstream":
        ThreadingHTTPServer.daemon_threads = True
        ThreadingHTTPServer(("127.0.0.1", args.port), Upstream).serve_forever()
    elif args.command == "wait":
        return wait_http("127.0.0.1", args.port, args.path, args.seconds)
    else:
        return traffic(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
