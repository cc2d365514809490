"""How long the fleet's readers take on a big fleet: watch, status, hosts, a scrape.

The benchmark starts its own redis-server on a free loopback port and
writes a fleet of ``--hosts`` hosts (default 10,000) the way the collector
leaves it: each host hash is ``wire.state.report_fields`` of a report with
the seed's four checks, plus the collector's own ``report_status`` and
``dropped_total``; each host has ``--history`` history lines (default 13,
made by the collector's ``history_line``), its entry in the hosts index,
and every fourth host a sessions hash. About one host in twenty has its
disk past the threshold (WARNING), one in a hundred a damaged database
(CRITICAL), and one in fifty has been silent for an hour (stale).

It then times, as fresh processes of the installed commands, each
``--rounds`` times (default 3), and prints the medians:

* ``python -c pass``: the interpreter's bare start-up, the reference;
  ``mtbbs-collector --help``: a command's start-up with its imports;
* ``mtbbs-monitor watch --once`` (one frame, 120 columns, to a pipe);
* ``mtbbs-collector status`` (the fleet check) and ``mtbbs-collector hosts``;
* a scrape of ``mtbbs-collector exporter``: an HTTP GET of ``/metrics``
  (fleet aggregates) and of the per-host series (an exporter started with
  ``--host-series``), with the size of the answer and its number of
  series; the exporter is started once and only the GET is timed.

Each figure is printed with the same figure less the start-up ("beyond
start-up"). Nothing is asserted: the exit status is 0 when every command
did what it should (exit code, output), whatever the times.

    python bench/bench_readers.py [--hosts 10000] [--history 13] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis
from support import command, start_redis

from collector.plan import history_line
from stack.embedded import any_free_port
from wire.keys import KeySpace
from wire.messages import Report, SessionInfo
from wire.state import iso_from_ms, report_fields, session_text, severity_status

CHUNK = 1000  # hosts written per pipeline round trip
COMMAND_TIMEOUT_S = 300.0
EXPORTER_START_TIMEOUT_S = 30.0


def make_report(index: int, seq: int, observed_at: float, rng: random.Random) -> Report:
    """The seed's four checks, with a few hosts in trouble."""
    host = f"bbs-{index:06d}"
    disk = round(rng.uniform(92, 97), 1) if index % 20 == 7 else round(rng.uniform(20, 85), 1)
    database_ok = index % 100 != 13
    sessions = rng.randint(0, 12)
    rss = round(rng.uniform(30, 400), 1)
    return Report(
        host=host, agent_version="0.1.0", epoch=1, seq=seq, observed_at=observed_at,
        interval=60.0,
        checks={
            "database": {"healthy": database_ok, "integrity": "ok" if database_ok else
                         "*** in database main *** Page 4: btreeInitPage() returns error",
                         "size_bytes": 5_483_520, "size_mb": 5.23, "table_count": 8,
                         "path": "data/mtbbs.db", "integrity_age_s": 120.0},
            "sessions": {"healthy": True, "active_sessions": sessions, "max_sessions": 100,
                         "max_same_ip": 5, "top_ip_sessions": 1, "top_ip": "192.0.2.1"},
            "disk_space": {"healthy": disk < 90, "total_gb": 500.0, "used_gb": disk * 5,
                           "free_gb": 500 - disk * 5, "percent_used": disk,
                           "warning_threshold": 90, "path": "data"},
            "memory": {"healthy": True, "process_rss_mb": rss, "process_vms_mb": rss * 3,
                       "system_percent": 55.5, "warning_threshold_process_mb": 500,
                       "warning_threshold_system_percent": 90},
        },
    )


def build_fleet(client: redis.Redis, keys: KeySpace, hosts: int, history: int) -> None:
    """Write ``hosts`` hosts as the collector leaves them (see the module's docstring)."""
    rng = random.Random(20)
    now_ms = int(time.time() * 1000)
    for start in range(0, hosts, CHUNK):
        pipe = client.pipeline(transaction=False)
        for index in range(start, min(start + CHUNK, hosts)):
            silent_ms = 3_600_000 if index % 50 == 11 else rng.randint(0, 50_000)
            last_ms = now_ms - silent_ms
            lines = []
            report = make_report(index, 1, last_ms / 1000, rng)
            for seq in range(1, history + 1):
                entry_ms = last_ms - (history - seq) * 60_000
                report = make_report(index, seq, entry_ms / 1000, rng)
                lines.append(history_line(report, iso_from_ms(entry_ms)))
            fields = report_fields(report, last_ms)
            fields["report_status"] = severity_status(report.checks).name
            fields["dropped_total"] = "0"
            pipe.hset(keys.host(report.host), mapping=fields)
            if lines:
                pipe.lpush(keys.host_history(report.host), *lines)  # newest ends first
            if index % 4 == 0:
                pipe.hset(keys.host_sessions(report.host), mapping={
                    f"192.0.2.{n}:{50000 + n}": session_text(SessionInfo(
                        f"192.0.2.{n}:{50000 + n}", "guest" if n else "sysop", "logged_in",
                        last_ms / 1000)) for n in range(3)})
            pipe.zadd(keys.hosts_index(), {report.host: last_ms})
        pipe.execute()


def timed(run: Callable[[], None], rounds: int) -> float:
    """The median wall time of ``rounds`` calls of ``run``."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_command(argv: list[str], env: dict[str, str], codes: tuple[int, ...],
                expect: str) -> Callable[[], None]:
    """A call that runs ``argv`` and fails unless it exits with one of ``codes`` and
    prints ``expect``."""

    def run() -> None:
        done = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, check=False)
        if done.returncode not in codes or expect not in done.stdout:
            sys.exit(f"{' '.join(argv[:2])} failed (exit {done.returncode}):\n"
                     f"{done.stdout[:2000]}{done.stderr[:2000]}")

    return run


def start_exporter(env: dict[str, str], *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """A running ``mtbbs-collector exporter`` and its /metrics URL, once it answers."""
    port = any_free_port()
    process = subprocess.Popen([command("mtbbs-collector"), "exporter", "--port", str(port),
                                "--bind", "127.0.0.1", *extra], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + EXPORTER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=COMMAND_TIMEOUT_S) as answer:
                answer.read()
            return process, url
        except OSError:
            if process.poll() is not None:
                sys.exit("the exporter exited")
            time.sleep(0.1)
    process.kill()
    sys.exit("the exporter did not answer")


def scrape(url: str, rounds: int) -> tuple[float, int, int]:
    """The median time of a GET of ``url``, the answer's size and number of series."""
    body = b""

    def get() -> None:
        nonlocal body
        with urllib.request.urlopen(url, timeout=COMMAND_TIMEOUT_S) as answer:
            body = answer.read()

    seconds = timed(get, rounds)
    if b"mtbbs_up 1.0" not in body:
        sys.exit(f"the scrape of {url} did not read Redis")
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return seconds, len(body), series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=13, help="history lines per host")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-readers-") as tmp:
        server, port = start_redis(Path(tmp))
        try:
            client = redis.Redis(port=port)
            keys = KeySpace()
            started = time.perf_counter()
            build_fleet(client, keys, args.hosts, args.history)
            print(f"fleet: {args.hosts:,} hosts, {args.history} history lines each, "
                  f"written in {time.perf_counter() - started:.1f} s")
            env = {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "LANG": "C.UTF-8",
                   "COLUMNS": "120", "MTBBS_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
            rounds = args.rounds
            startup = timed(run_command([sys.executable, "-c", "pass"], env, (0,), ""), rounds)
            imports = timed(run_command([command("mtbbs-collector"), "--help"], env, (0,),
                                        "usage"), rounds)
            figures = [
                ("mtbbs-monitor watch --once", timed(run_command(
                    [command("mtbbs-monitor"), "watch", "--once"], env, (0,),
                    f"hosts: {args.hosts}"), rounds)),
                ("mtbbs-collector status", timed(run_command(
                    [command("mtbbs-collector"), "status"], env, (0, 1, 2),
                    f"MTBBS CRITICAL - {args.hosts} hosts"), rounds)),
                ("mtbbs-collector hosts", timed(run_command(
                    [command("mtbbs-collector"), "hosts"], env, (0,), "HOST"), rounds)),
            ]
            scrapes = []
            for label, extra in (("GET /metrics (fleet aggregates)", ()),
                                 ("GET /metrics, exporter --host-series", ("--host-series",))):
                exporter, url = start_exporter(env, *extra)
                try:
                    seconds, size, series = scrape(url, rounds)
                finally:
                    exporter.terminate()
                    exporter.wait(10)
                scrapes.append((label, seconds, size, series))
        finally:
            server.terminate()
            server.wait(10)

    print(f"medians of {rounds} rounds, {args.hosts:,} hosts")
    print(f"python start-up (python -c pass): {startup:.3f} s")
    print(f"mtbbs-collector --help (start-up and imports): {imports:.3f} s")
    for label, seconds in figures:
        print(f"{label}: {seconds:.3f} s, beyond start-up {seconds - startup:.3f} s")
    for label, seconds, size, series in scrapes:
        print(f"{label}: {seconds:.3f} s, {size / 1e6:.2f} MB, {series:,} series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
