"""What the keepalive's sweep costs on a big fleet, step by step, against reading it all.

The benchmark starts its own redis-server on a free loopback port and
writes a fleet of ``--hosts`` hosts (default 100,000) the way the collector
leaves it: each host hash is ``wire.state.report_fields`` of a report with
the seed's four checks (60 s interval) plus the collector's own
``report_status``, ``dropped_total`` and ``stream_id``; the hosts index
scores each host by its last report, somewhere in the last 60 s; the due
index (``KeySpace.hosts_due``) holds each host at last seen + 3 x 60 s +
1 ms, as the report's own write scheduled it; and a collector heartbeat
says a collector was up, so that no pass takes the fleet's age for an
outage of Redis.

It then times each ``collector.keepalive.Sweeper.step`` (wall clock, the
Redis time each step is given read before it, as the collector does) and
prints the longest step, the median step, the whole pass (the sum of its
steps) and the number of steps, for:

(a) the first pass of a new sweeper on that fleet: it seeds the due index
    from the hosts index (a ZSCAN and a ZADD NX a page), then judges;
(b) a later pass of the healthy fleet (the first of ``--idle-passes``);
(c) after 10 % of the hosts went silent (their ``last_seen_ms``, index
    score and due score moved 200 s back): the pass that marks them stale;
(d) the pass after it.

With each it prints how many hosts the pass marked and how many commands
Redis ran for it (``INFO commandstats``: the sweep's own INFO, which
checks for an outage, and its scripts' commands included), and how long
the pass took as a share of the references, measured in the same run on
the same fleet:

* one ZRANGE of the whole hosts index;
* "read-all": that ZRANGE plus one pipelined HMGET of the sweep's fields
  of every host, which is what every sweep did, every 5 s, before the
  due index.

Last, the idle cost: the CPU seconds (this process and redis-server) of a
later pass of the healthy fleet, the mean of ``--idle-passes`` passes in a
row, times the passes a minute at ``sweep_interval_s`` = 5, beside the
same for read-all. Nothing is asserted; the exit status is 0 whatever the
figures. The default run takes well under two minutes.

    python bench/bench_sweep.py [--hosts 100000] [--page 500] [--idle-passes 2000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
from support import start_redis

from collector import keepalive
from collector.settings import CollectorSettings
from wire.keys import KeySpace
from wire.messages import Report
from wire.replies import server_time_ms, text
from wire.state import iso_from_ms, report_fields, severity_status

CHUNK = 1000  # hosts written per pipeline round trip
INTERVAL_S = 60.0
SILENT_SHARE = 10  # one host in this many goes silent for (c)
SILENT_BACK_MS = 200_000  # past 3 intervals, short of 5: WARNING
SWEEP_INTERVAL_S = 5.0
# The fields the sweep reads of a host; before the due index every pass
# read them of every host.
SWEEP_FIELDS = ("last_seen_ms", "interval_s", "stale", "report_status", "unhealthy",
                "grace_until_ms")
REFERENCE_ROUNDS = 3


def make_report(host: str, observed_at: float, rng: random.Random) -> Report:
    """The seed's four checks, healthy."""
    sessions = rng.randint(0, 12)
    return Report(
        host=host, agent_version="0.1.0", epoch=1, seq=1, observed_at=observed_at,
        interval=INTERVAL_S,
        checks={
            "database": {"healthy": True, "integrity": "ok", "size_bytes": 5_483_520,
                         "size_mb": 5.23, "table_count": 8, "path": "data/mtbbs.db"},
            "sessions": {"healthy": True, "active_sessions": sessions,
                         "sessions": ({"client_id": "192.0.2.1:5000", "user_id": "guest",
                                       "state": "logged_in",
                                       "connected_at": "2026-01-01T00:00:00Z"},),
                         "max_sessions": 100},
            "disk_space": {"healthy": True, "total_gb": 500.0, "used_gb": 250.5,
                           "free_gb": 249.5, "percent_used": round(rng.uniform(20, 85), 1),
                           "warning_threshold": 90},
            "memory": {"healthy": True, "process_rss_mb": round(rng.uniform(30, 400), 1),
                       "process_vms_mb": 123.4, "system_percent": 65.3,
                       "warning_threshold_process_mb": 500},
        },
    )


def due_ms(last_seen_ms: int, settings: CollectorSettings) -> int:
    """When a host last seen then turns stale (what its report scheduled)."""
    due = keepalive.report_due_ms(last_seen_ms, INTERVAL_S, settings)
    assert due is not None  # a positive interval
    return due


def build_fleet(client: redis.Redis, keys: KeySpace, hosts: int,
                settings: CollectorSettings) -> list[str]:
    """Write the fleet (see the module's docstring); its host ids."""
    rng = random.Random(20)
    now_ms = server_time_ms(client)
    names = [f"bbs-{index:06d}" for index in range(hosts)]
    for start in range(0, hosts, CHUNK):
        pipe = client.pipeline(transaction=False)
        for host in names[start:start + CHUNK]:
            last_ms = now_ms - rng.randint(0, int(INTERVAL_S * 1000) - 1)
            report = make_report(host, last_ms / 1000, rng)
            # (Any keys: redis-py's stubs take a Mapping of every key type it encodes.)
            fields: dict[Any, str] = report_fields(report, last_ms)
            fields["report_status"] = severity_status(report.checks).name
            fields["dropped_total"] = "0"
            fields["stream_id"] = f"{last_ms}-0"
            pipe.hset(keys.host(host), mapping=fields)
            pipe.zadd(keys.hosts_index(), {host: last_ms})
            pipe.zadd(keys.hosts_due(), {host: due_ms(last_ms, settings)})
        pipe.execute()
    heartbeat(client, keys)
    return names


def heartbeat(client: redis.Redis, keys: KeySpace) -> None:
    """A collector's heartbeat now: Redis was up, the fleet's age is no outage."""
    client.zadd(keys.collectors_index(), {"bench": server_time_ms(client)})


def go_silent(client: redis.Redis, keys: KeySpace, hosts: list[str],
              settings: CollectorSettings) -> None:
    """Move the last report of ``hosts`` back by SILENT_BACK_MS, everywhere it shows."""
    for start in range(0, len(hosts), CHUNK):
        chunk = hosts[start:start + CHUNK]
        pipe = client.pipeline(transaction=False)
        for host in chunk:
            pipe.zscore(keys.hosts_index(), host)
        seen = [int(score) for score in pipe.execute()]
        for host, last_ms in zip(chunk, seen, strict=True):
            back = last_ms - SILENT_BACK_MS
            pipe.hset(keys.host(host), mapping={"last_seen_ms": str(back),
                                                "last_seen": iso_from_ms(back)})
            pipe.zadd(keys.hosts_index(), {host: back})
            pipe.zadd(keys.hosts_due(), {host: due_ms(back, settings)})
        pipe.execute()


def redis_cpu(pid: int) -> float:
    """User + system CPU seconds redis-server has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command so far. Redis counts a command once it is done, so
    the INFO asking is not in its own answer, but is in the next one."""
    stats = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


@dataclass
class Pass:
    """One timed pass: each step's wall seconds, what it marked, what Redis ran."""

    steps: list[float]
    marked: int
    commands: int
    hash_reads: int

    def line(self, label: str, read_all: float, zrange: float) -> str:
        total = sum(self.steps)
        return (f"{label:<34} {len(self.steps):4d} steps, longest {max(self.steps) * 1e3:7.2f} "
                f"ms, median {statistics.median(self.steps) * 1e3:6.2f} ms, pass "
                f"{total * 1e3:8.2f} ms = {total / read_all:.4f} x read-all, "
                f"{total / zrange:6.2f} x ZRANGE; marked {self.marked}, "
                f"{self.commands} commands ({self.hash_reads} HMGET)")


def timed_pass(client: redis.Redis, sweeper: keepalive.Sweeper) -> Pass:
    before = command_calls(client)
    steps: list[float] = []
    marked = 0
    while True:
        now_ms = server_time_ms(client)  # as the collector does before each step
        started = time.perf_counter()
        marked += len(sweeper.step(client, now_ms))
        steps.append(time.perf_counter() - started)
        if not sweeper.busy:
            break
    after = command_calls(client)
    # Not the sweep's: the INFO that took ``before`` and the TIME before each step.
    commands = sum(after.values()) - sum(before.values()) - 1 - len(steps)
    hash_reads = after.get("cmdstat_hmget", 0) - before.get("cmdstat_hmget", 0)
    return Pass(steps, marked, commands, hash_reads)


def zrange_all(client: redis.Redis, keys: KeySpace) -> None:
    client.zrange(keys.hosts_index(), 0, -1)


def read_all(client: redis.Redis, keys: KeySpace) -> None:
    hosts = client.zrange(keys.hosts_index(), 0, -1)
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        pipe.hmget(keys.host(text(host)), SWEEP_FIELDS)
    pipe.execute()


def measured(run: Callable[[], None], rounds: int, server_pid: int) -> tuple[float, float]:
    """The median wall seconds of ``rounds`` calls of ``run`` and the mean CPU
    seconds (this process and redis-server) of one."""
    walls = []
    cpu_before = time.process_time() + redis_cpu(server_pid)
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        walls.append(time.perf_counter() - started)
    cpu = time.process_time() + redis_cpu(server_pid) - cpu_before
    return statistics.median(walls), cpu / rounds


def server_line(client: redis.Redis) -> str:
    info = client.info("server")
    allocator = client.info("memory").get("mem_allocator", "?")
    return f"redis-server {info.get('redis_version', '?')} ({allocator})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=keepalive.PAGE,
                        help="entries a sweep step handles")
    parser.add_argument("--idle-passes", type=int, default=2000,
                        help="passes of the healthy fleet whose CPU is averaged")
    args = parser.parse_args()
    settings = CollectorSettings(sweep_interval_s=SWEEP_INTERVAL_S)
    keys = KeySpace()
    per_minute = 60 / settings.sweep_interval_s

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        server, port = start_redis(Path(tmp))
        try:
            client = redis.Redis(port=port)
            print(f"server: {server_line(client)}")
            started = time.perf_counter()
            hosts = build_fleet(client, keys, args.hosts, settings)
            print(f"fleet: {args.hosts:,} hosts reporting every {INTERVAL_S:.0f} s, written in "
                  f"{time.perf_counter() - started:.1f} s; page {args.page}")

            zrange_s, _ = measured(lambda: zrange_all(client, keys), 5, server.pid)
            read_all_s, read_all_cpu = measured(lambda: read_all(client, keys),
                                                REFERENCE_ROUNDS, server.pid)
            print(f"reference: ZRANGE of the whole index   {zrange_s * 1e3:8.2f} ms")
            print(f"reference: read-all (ZRANGE + pipelined HMGET of {len(SWEEP_FIELDS)} fields "
                  f"of every host) {read_all_s * 1e3:8.2f} ms, CPU {read_all_cpu * 1e3:.1f} ms")

            # Gaps between passes longer than contact_gap_ms read as an
            # outage (a grace for all): the passes follow each other closely
            # and the heartbeat is fresh for the first.
            heartbeat(client, keys)
            sweeper = keepalive.Sweeper(keys, settings, page=args.page)
            first = timed_pass(client, sweeper)
            print(first.line("(a) first pass (seeding)", read_all_s, zrange_s))
            later = timed_pass(client, sweeper)
            print(later.line("(b) later pass, healthy fleet", read_all_s, zrange_s))

            cpu_before = time.process_time() + redis_cpu(server.pid)
            walls = []
            for _ in range(args.idle_passes):
                now_ms = server_time_ms(client)
                begun = time.perf_counter()
                sweeper.sweep(client, now_ms)
                walls.append(time.perf_counter() - begun)
            # The TIME before each pass is counted in: the collector asks it too.
            idle_cpu = (time.process_time() + redis_cpu(server.pid) - cpu_before) \
                / args.idle_passes
            print(f"(b) {args.idle_passes} later passes in a row: median "
                  f"{statistics.median(walls) * 1e3:.3f} ms, CPU {idle_cpu * 1e3:.3f} ms a pass "
                  "(this process + redis-server)")

            silent = hosts[3::SILENT_SHARE]
            go_silent(client, keys, silent, settings)
            marking = timed_pass(client, sweeper)
            print(marking.line(f"(c) {len(silent):,} hosts gone silent", read_all_s, zrange_s))
            after = timed_pass(client, sweeper)
            print(after.line("(d) the pass after", read_all_s, zrange_s))

            print(f"idle cost at sweep_interval_s = {settings.sweep_interval_s:g} "
                  f"({per_minute:.0f} passes a minute): {idle_cpu * per_minute:.4f} CPU s a "
                  f"minute; read-all {read_all_cpu * per_minute:.2f} CPU s a minute "
                  f"(ratio {idle_cpu / read_all_cpu:.5f})")
            return 0
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
