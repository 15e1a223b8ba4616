#!/usr/bin/env python3
"""Tagcast against Sockudo 5.2.0 (the nearest Rust peer: a Pusher-protocol server with tag
filtering), side by side in one run on this machine, with the same load generator.

    cargo build --release -p tagcast-server -p tagcast-bench
    python3 bench/compare-sockudo.py            # appends to bench/results-sockudo.jsonl

Sockudo is built on demand by bench/baselines/build-sockudo (once; it needs protoc and takes
a while). Every scenario starts a fresh server on a free loopback port and stops it after:

- idle: 10,000 connections, each connected and subscribed (Tagcast: tags {"user": i,
  "g": i % 100} in the handshake; Sockudo: one channel, filter eq("g", i % 100)); server RSS
  growth per connection.
- connect: 10,000 handshakes, 64 connectors (Sockudo: until `connection_established`).
- burst: 1,000 subscribers in one group, 64-byte payloads, published over HTTP (Sockudo's
  REST API, one request per connection: it answers `Connection: close`); Tagcast on the same
  pattern, with keep-alive, and over its WebSocket for reference.
- nobatch: 10,000 subscribers in 100 groups, one publisher, one request in flight.

Sockudo runs each fan-out twice: groups as tag filters on one channel (its tag filtering,
what Tagcast's tags compare with) and as a channel per group (plain Pusher routing).

Ratios are Tagcast / Sockudo (for memory and CPU per delivery: lower is better for Tagcast).
Sockudo's settings are in SOCKUDO_CONFIG below and in BENCHMARKS.md ("Sockudo").
"""

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "tagcast-bench")
TAGCAST = os.path.join(ROOT, "target", "release", "tagcast")
BUILD_SOCKUDO = os.path.join(ROOT, "bench", "baselines", "build-sockudo")
SOCKUDO = os.path.join(ROOT, "bench", "baselines", "sockudo", "bin", "sockudo")
APP = {"id": "bench", "key": "bench-key", "secret": "bench-secret"}
# Sockudo routes a group either by a tag filter on one channel (the default of
# `--server-protocol pusher`: its tag filtering, what Tagcast's tags compare with) or, with
# these options, by a channel per group and no filter (plain Pusher routing, its fast path).
CHANNELS = ["--pusher-routing", "channel"]

# Every limit and rate limiter off, and the features these runs do not use off too (they would
# only cost Sockudo time). Kept at their defaults: the per-connection queue bound
# (websocket.max_messages = 1000, disconnect_on_buffer_full = true: a slow-consumer bound like
# Tagcast's own, never reached here; raising it would preallocate a larger queue per
# connection), jemalloc, and the local (single-node) adapter. The log filter is warn (RUST_LOG,
# see Server): its default, info, logs every subscription.
SOCKUDO_CONFIG = """\
host = "127.0.0.1"
port = {port}
mode = "production"
debug = false
max_connections = 0               # no server-wide connection cap
websocket_max_payload_kb = 10240  # default 64
shutdown_grace_period = 1         # default 10: only how long a stop takes between runs

[rate_limiter]
enabled = false                   # default on: API 100/60 s, WebSocket connects 20/60 s

[metrics]
enabled = false                   # default on (Prometheus on port 9601)

[tag_filtering]
enabled = true                    # default off: needed for the `filter` of subscriptions
enable_tags = false               # default true: tags not repeated in each delivery (Tagcast sends only the message)

[delta_compression]
enabled = false                   # default on (per-subscriber opt-in; unused here)

[idempotency]
enabled = false                   # default on (only with an idempotency key; unused here)

[event_limits]
max_channels_at_once = 100
max_name_length = 200
max_payload_in_kb = 10240         # default 100
max_batch_size = 1000             # default 10

[http_api]
request_limit_in_mb = 100         # default 10

[queue]
driver = "none"                   # default redis (webhook queue; no webhooks here)

[app_manager]
driver = "memory"

[[app_manager.array.apps]]
id = "{id}"
key = "{key}"
secret = "{secret}"
enabled = true
max_connections = 0               # no per-app connection cap
max_client_events_per_second = 0  # no client-event limiter (client events are off anyway)
enable_client_messages = false
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


class Server:
    """A fresh server on a free loopback port, stopped on exit. Its output goes to a file."""

    def __init__(self, kind, workdir):
        self.kind = kind
        self.port = free_port()
        self.log = open(os.path.join(workdir, f"{kind}-{self.port}.log"), "w")
        if kind == "tagcast":
            cmd = [TAGCAST, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
            env, cwd = None, None
        else:
            config = os.path.join(workdir, f"sockudo-{self.port}.toml")
            with open(config, "w") as f:
                f.write(SOCKUDO_CONFIG.format(port=self.port, **APP))
            cmd = [SOCKUDO, "--config", config]
            # Only PATH and HOME: Sockudo reads many environment variables (HOST, PORT, DEBUG,
            # ...) over its config file. Its working folder has no config/config.toml.
            # RUST_LOG=warn: at its default (info) it logs every subscription, which Tagcast
            # does not; the comparison is of the servers, not of their logs.
            env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"),
                   "RUST_LOG": "warn"}
            cwd = workdir
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        wait_port(self.port, self.proc, kind)
        time.sleep(0.5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        time.sleep(0.5)


def bench(server, label, scenario, *args):
    cmd = [BENCH, scenario, "--url", f"ws://127.0.0.1:{server.port}", "--server", label,
           "--server-pid", str(server.proc.pid), *map(str, args)]
    if server.kind == "sockudo":
        cmd += ["--server-protocol", "pusher", "--app-id", APP["id"], "--app-key", APP["key"],
                "--app-secret", APP["secret"]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results-sockudo.jsonl"))
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    opts = parser.parse_args()
    subprocess.run([BUILD_SOCKUDO], check=True)
    for binary in (TAGCAST, BENCH):
        if not os.path.exists(binary):
            sys.exit(f"{binary} is missing: cargo build --release -p tagcast-server -p tagcast-bench")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    q = 10 if opts.quick else 1
    workdir = tempfile.mkdtemp(prefix="tagcast-sockudo-")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = loadavg()
    r = {}

    def run(kind, name, scenario, *args, label=None):
        with Server(kind, workdir) as server:
            r[name] = bench(server, label or kind, scenario, *args)

    try:
        # Idle memory per connection (connected and subscribed).
        for kind in ("tagcast", "sockudo"):
            run(kind, ("idle", kind), "idle", "--connections", 10000 // q)
        run("sockudo", ("idle", "sockudo-channels"), "idle", "--connections", 10000 // q,
            *CHANNELS, label="sockudo-channels")
        # Handshakes per second, 64 connectors.
        for kind in ("tagcast", "sockudo"):
            run(kind, ("connect", kind), "connect", "--connections", 10000 // q, "--connectors", 64)
        # HTTP-published burst: 1,000 subscribers, one group. Eight publishers, each sending
        # its next request once the previous one is answered (HTTP orders nothing else) and
        # with at most 16 requests answered but not yet completely delivered.
        burst = ["fanout", "--subscribers", 1000, "--groups", 1, "--payload", 64,
                 "--publishers", 8, "--in-flight", 16, "--messages", 500 // q]
        run("tagcast", ("burst", "tagcast-ws"), *burst, label="tagcast-ws")
        run("tagcast", ("burst", "tagcast-http"), *burst, "--publish-over", "http", label="tagcast-http")
        run("tagcast", ("burst", "tagcast-keepalive"), *burst, "--publish-over", "http-keep-alive",
            label="tagcast-http-keep-alive")
        run("sockudo", ("burst", "sockudo"), *burst, "--publish-over", "http", label="sockudo-http")
        run("sockudo", ("burst", "sockudo-channels"), *burst, "--publish-over", "http", *CHANNELS,
            label="sockudo-http-channels")
        # Fan-out that cannot batch: 10,000 subscribers in 100 groups, one request in flight.
        nobatch = ["fanout", "--subscribers", 10000 // q, "--groups", 100, "--publishers", 1,
                   "--in-flight", 1, "--messages", 2000 // q]
        run("tagcast", ("nobatch", "tagcast-ws"), *nobatch, label="tagcast-ws")
        run("tagcast", ("nobatch", "tagcast-http"), *nobatch, "--publish-over", "http", label="tagcast-http")
        run("tagcast", ("nobatch", "tagcast-keepalive"), *nobatch, "--publish-over", "http-keep-alive",
            label="tagcast-http-keep-alive")
        run("sockudo", ("nobatch", "sockudo"), *nobatch, "--publish-over", "http", label="sockudo-http")
        run("sockudo", ("nobatch", "sockudo-channels"), *nobatch, "--publish-over", "http", *CHANNELS,
            label="sockudo-http-channels")
    finally:
        load_after = loadavg()
        meta = {"run_started": started, "loadavg_before": load_before, "loadavg_after": load_after,
                "quick": opts.quick, "sockudo_config": SOCKUDO_CONFIG.format(port="<free port>", **APP)}
        with open(opts.out, "a") as f:
            for (scenario, who), res in r.items():
                f.write(json.dumps({**res, "case": scenario, "variant": who, **meta}) + "\n")
        shutil.rmtree(workdir, ignore_errors=True)

    lines = [f"load average before {load_before}, after {load_after}; ratios are Tagcast / Sockudo"]
    t = r[("idle", "tagcast")]["server_rss_bytes_per_connection"]
    for s in ("sockudo", "sockudo-channels"):
        u = r[("idle", s)]["server_rss_bytes_per_connection"]
        lines.append(f"idle memory per connection: tagcast {t / 1024:.1f} KiB, {s} {u / 1024:.1f} KiB: {t / u:.3f}x")
    t = r[("connect", "tagcast")]["connects_per_sec"]
    u = r[("connect", "sockudo")]["connects_per_sec"]
    lines.append(f"handshakes/s: tagcast {t:.0f}, sockudo {u:.0f}: {t / u:.2f}x")
    for case in ("burst", "nobatch"):
        for s in ("sockudo", "sockudo-channels"):
            base = r[(case, s)]
            lines.append(f"{case}: {s} (http) {base['deliveries_per_sec']:.0f} deliveries/s, "
                         f"{base['server_cpu_us_per_delivery']} us CPU/delivery")
            for who in ("tagcast-http", "tagcast-keepalive", "tagcast-ws"):
                res = r[(case, who)]
                lines.append(f"  {who}: {res['deliveries_per_sec']:.0f}/s "
                             f"({res['deliveries_per_sec'] / base['deliveries_per_sec']:.2f}x), "
                             f"CPU/delivery {res['server_cpu_us_per_delivery']} us "
                             f"({res['server_cpu_us_per_delivery'] / base['server_cpu_us_per_delivery']:.2f}x)")
    bad = {f"{k[0]}/{k[1]}": (v["lost"], v["duplicates"], v["reordered"])
           for k, v in r.items() if "lost" in v and (v["lost"] or v["duplicates"] or v["reordered"])}
    lines.append(f"lost/duplicated/reordered: {bad or 'none'}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
