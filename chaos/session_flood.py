"""Chaos: a flood of session events through the reporter the BBS embeds.

This process plays the BBS: it calls ``register_session``,
``update_session_state`` and ``unregister_session`` at ``--rate`` calls per
second (each call is one session event), timing every call, in four phases
of ``--duration`` seconds each:

1. ``reference``: the same calls on a plain dict (what the BBS does anyway);
   the worst latency here is this machine's own noise (GC, scheduler);
2. ``redis up``: through a real :class:`agent.reporter.SessionReporter`;
3. ``redis down``: Redis SIGKILLed; the reporter's queue fills and drops;
4. ``redis back``: Redis restarted; the reporter resynchronises.

It prints per phase the calls made, the worst and 99.9th percentile call
latency and their ratio to the reference, the process's peak RSS growth,
and the reporter's counters; at the end the sessions stream's length
against its MAXLEN. Expected: the worst latency stays in the reference's
order of magnitude, memory stays bounded by the reporter's queue, events
are either sent or counted as dropped.

    python chaos/session_flood.py --rate 10000 --duration 10
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import psutil
from harness import RedisProcess, wait_until

from agent.reporter import SessionReporter
from wire.keys import KeySpace

MB = 1024 * 1024
HOST = "bbs-flood"  # the simulated BBS's host id
CONCURRENT = 200  # sessions open at once in the simulated BBS


class PlainTable:
    """The reference: the BBS's own session bookkeeping, nothing sent anywhere."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[Any, str, float]] = {}

    def register_session(self, client_id: str, user_id: Any = None,
                         state: str = "connected") -> None:
        self.sessions[client_id] = (user_id, state, time.time())

    def update_session_state(self, client_id: str, user_id: Any = None,
                             state: Any = None) -> None:
        row = self.sessions.get(client_id)
        if row is not None:
            self.sessions[client_id] = (user_id or row[0], state or row[1], row[2])

    def unregister_session(self, client_id: str) -> None:
        self.sessions.pop(client_id, None)


def client_id(index: int) -> str:
    """A distinct MTBBS client id ``ip:port`` per session index."""
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}:{1024 + index % 60000}"


def flood(target: Any, *, rate: float, duration: float, start_index: int,
          on_tick: Callable[[], None] | None = None) -> tuple[list[int], int, int]:
    """Call ``target`` ``rate`` times a second for ``duration`` s.

    Returns the call latencies (ns), the next session index, and the peak
    RSS (bytes) seen during the phase.
    """
    process = psutil.Process()
    latencies: list[int] = []
    append = latencies.append
    clock = time.perf_counter_ns
    interval_ns = int(1e9 / rate)
    total = int(rate * duration) // 3 * 3  # whole sessions: register, log in, leave
    begin = clock()
    index = start_index
    peak = process.memory_info().rss
    next_sample = begin
    for call in range(total):
        # Pace: each call has its slot; sleep only when a millisecond ahead,
        # and never count the sleeping as the call's latency.
        slot = begin + call * interval_ns
        now = clock()
        if slot - now > 1_000_000:
            time.sleep((slot - now) / 1e9)
        step = call % 3
        if step == 0:
            client = client_id(index)
            t0 = clock()
            target.register_session(client)
        elif step == 1:
            t0 = clock()
            target.update_session_state(client, "guest" if index % 2 else f"user{index % 997}",
                                        "logged_in")
        else:
            old = index - CONCURRENT
            old_client = client_id(old)
            t0 = clock()
            target.unregister_session(old_client)
            index += 1
        append(clock() - t0)
        if t0 >= next_sample:
            peak = max(peak, process.memory_info().rss)
            next_sample = t0 + 100_000_000
            if on_tick is not None:
                on_tick()
    peak = max(peak, process.memory_info().rss)
    return latencies, index, peak


def summary(latencies: list[int], rate: float) -> dict[str, float]:
    ordered = sorted(latencies)
    n = len(ordered)
    worst = max(range(n), key=latencies.__getitem__) if n else 0
    return {
        "calls": n,
        "worst_at_s": round(worst / rate, 2),
        "max_us": round(ordered[-1] / 1000, 1) if n else 0.0,
        "p999_us": round(ordered[min(n - 1, int(n * 0.999))] / 1000, 1) if n else 0.0,
        "p99_us": round(ordered[min(n - 1, int(n * 0.99))] / 1000, 2) if n else 0.0,
        "median_us": round(ordered[n // 2] / 1000, 2) if n else 0.0,
    }


def scenario(workdir: Path, *, rate: float, duration: float, max_queue: int,
             stream_maxlen: int) -> dict[str, Any]:
    keys = KeySpace()
    server = RedisProcess(workdir / "redis", aof=False).start()
    process = psutil.Process()
    try:
        gc.collect()
        reference, index, _ = flood(PlainTable(), rate=rate, duration=duration, start_index=0)
        ref = summary(reference, rate)
        baseline = process.memory_info().rss
        reporter = SessionReporter(server.url, HOST, max_queue=max_queue,
                                   stream_maxlen=stream_maxlen, backoff_max=0.5).start()
        phases: dict[str, dict[str, Any]] = {"reference": ref}
        try:
            up, index, peak_up = flood(reporter, rate=rate, duration=duration,
                                       start_index=index)
            sent_up = reporter.sent
            reporter.flush(10)
            phases["redis_up"] = {**summary(up, rate),
                                  "rss_growth_mb": round((peak_up - baseline) / MB, 1),
                                  "sent": reporter.sent, "dropped": reporter.dropped}
            server.kill()
            dropped_before = reporter.dropped
            down, index, peak_down = flood(reporter, rate=rate, duration=duration,
                                           start_index=index)
            phases["redis_down"] = {**summary(down, rate),
                                    "rss_growth_mb": round((peak_down - baseline) / MB, 1),
                                    "dropped": reporter.dropped - dropped_before,
                                    "queue": reporter.stats()["queue"]}
            server.start()
            sent_before = reporter.sent
            dropped_before_back = reporter.dropped
            back, index, peak_back = flood(reporter, rate=rate, duration=duration,
                                           start_index=index)
            reporter.flush(15)
            phases["redis_back"] = {**summary(back, rate),
                                    "rss_growth_mb": round((peak_back - baseline) / MB, 1),
                                    "sent": reporter.sent - sent_before,
                                    "dropped": reporter.dropped - dropped_before_back}
            stats = reporter.stats()
        finally:
            reporter.close(10)
        client = server.client()
        # The stream is trimmed with MAXLEN ~: at most a node's worth over.
        stream = keys.sessions_stream(HOST)
        stream_len = wait_until(lambda: client.xlen(stream) or None, 10)
        snapshot = client.xrevrange(stream, count=1)
    finally:
        server.kill()
    worst_ref = max(ref["max_us"], 1.0)
    result: dict[str, Any] = {
        "rate_per_s": rate,
        "seconds_per_phase": duration,
        "reference_max_us": ref["max_us"],
        "reference_p999_us": ref["p999_us"],
    }
    for name in ("redis_up", "redis_down", "redis_back"):
        phase = phases[name]
        result[f"{name}_max_us"] = phase["max_us"]
        result[f"{name}_p999_us"] = phase["p999_us"]
        result[f"{name}_max_ratio"] = round(phase["max_us"] / worst_ref, 2)
        result[f"{name}_worst_at_s"] = phase["worst_at_s"]
        result[f"{name}_rss_growth_mb"] = phase["rss_growth_mb"]
    result.update({
        "events_called": sum(p["calls"] for p in phases.values()) - ref["calls"],
        "events_queued": stats["queued"],
        "events_sent": stats["sent"],
        "events_dropped": stats["dropped"],
        "dropped_while_up": phases["redis_up"]["dropped"],
        "dropped_while_down": phases["redis_down"]["dropped"],
        "dropped_after_restart": phases["redis_back"]["dropped"],
        "queue_bound": max_queue,
        "queue_at_end_of_outage": phases["redis_down"]["queue"],
        "snapshots": stats["snapshots"],
        "send_failures_while_down": stats["errors"],
        "unknown_or_refused": stats["unknown"] + stats["refused"] + stats["invalid"],
        "unaccounted": (sum(p["calls"] for p in phases.values()) - ref["calls"]
                        - stats["queued"] - stats["dropped"] - stats["unknown"]
                        - stats["refused"] - stats["invalid"]),
        "sessions_tracked_at_end": stats["sessions"],
        "stream_len": stream_len,
        "stream_maxlen": stream_maxlen,
        "sent_while_up": sent_up,
        "last_entry_present": bool(snapshot),
    })
    return result


def main() -> int:
    parser = harness.scenario_parser(__doc__)
    parser.add_argument("--rate", type=float, default=10_000, help="calls per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--max-queue", type=int, default=10_000,
                        help="the reporter's queue bound (default 10000, its default)")
    parser.add_argument("--stream-maxlen", type=int, default=20_000,
                        help="MAXLEN of the sessions stream (default 20000)")
    args = parser.parse_args()
    result = harness.run_and_report(
        args, "session event flood through the reporter", "chaos-flood-",
        lambda workdir: scenario(workdir, rate=args.rate, duration=args.duration,
                                 max_queue=args.max_queue,
                                 stream_maxlen=args.stream_maxlen))
    return 0 if result["unaccounted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
