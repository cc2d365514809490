"""Server time of the exporter's web page for a big fleet (goal: ``/`` in <= 200 ms).

The benchmark starts its own redis-server on a free loopback port and fills
it as a running fleet would: 1,000 hosts (``--hosts``) report through their
own streams and a collector in this process ingests them (so every host hash is
the collector's own), each host gets a full sparkline's worth of history
lines and a few sessions, a tenth of the hosts have a firing or pending
alert and two collectors a heartbeat. It then asks the exporter's WSGI
application for ``/`` (and ``/api/fleet``) ``--rounds`` times, timing each
call from the request to the last byte of the answer: the server's time,
Redis reads included, without the network or a browser. It prints the
round trips to Redis of one render, the page's size, and the best, median
and worst times; the median is judged against the goal. The exit status is
0 when every render answered 200 with every host on the page.

    python bench/bench_webpage.py [--hosts 1000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from prometheus_client.exposition import make_wsgi_app
from support import start_redis

from alerter.state import AlertState
from collector.exporter import registry_for
from collector.ingest import Collector
from collector.settings import CollectorSettings
from collector.web.server import WebApp
from wire.keys import KeySpace
from wire.messages import LOGGED_IN, Report, SessionEvent, stream_fields

GOAL_MS = 200.0
HISTORY_LINES = 30
PIPELINE_CHUNK = 500


def report(host: str, index: int) -> Report:
    disk = 40.0 + index % 55
    return Report(
        host=host, agent_version="0.1.0", epoch=1, seq=1, observed_at=time.time(),
        interval=60.0, dropped=0,
        checks={
            "database": {"healthy": index % 97 != 0, "integrity": "ok", "size_mb": 5.2},
            "sessions": {"healthy": True, "active_sessions": index % 7, "max_sessions": 20},
            "disk_space": {"healthy": disk < 90, "percent_used": disk,
                           "warning_threshold": 90},
            "memory": {"healthy": True, "process_rss_mb": 40.0 + index % 60,
                       "warning_threshold_process_mb": 500},
        })


def fill(client: redis.Redis, keys: KeySpace, hosts: int) -> None:
    """The fleet's state, written as the collector and the alerter write it."""
    names = [f"bbs-{i:04d}" for i in range(hosts)]
    pipe = client.pipeline(transaction=False)
    for index, host in enumerate(names):
        pipe.xadd(keys.reports_stream(host), dict(stream_fields(report(host, index))))
        for session in range(index % 4):
            pipe.xadd(keys.sessions_stream(host), dict(stream_fields(SessionEvent(
                host=host, epoch=1, seq=session + 1, observed_at=time.time(), kind=LOGGED_IN,
                client_id=f"192.0.2.{session}:{4000 + session}",
                user_id="guest" if session == 0 else f"user{session}", state="logged_in",
                connected_at=time.time() - 60))))
        if len(pipe) >= PIPELINE_CHUNK:
            pipe.execute()
    pipe.execute()
    for name in ("web-bench-a", "web-bench-b"):
        collector = Collector(client, keys, CollectorSettings(evaluate=False, block_ms=50),
                              name=name)
        collector.drain()
        collector.heartbeat()
    seconds, _ = client.time()
    now_ms = int(seconds) * 1000
    for index, host in enumerate(names):
        lines = []
        for point in range(HISTORY_LINES):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                  time.gmtime(now_ms / 1000 - point * 300))
            lines.append(f"{stamp},{(index + point) % 7},{40 + (index + point) % 55:.1f},"
                         f"{40 + point % 60:.1f}")
        pipe.delete(keys.host_history(host))
        pipe.rpush(keys.host_history(host), *lines)
        if index % 10 == 0:
            state = AlertState(state="firing" if index % 20 == 0 else "pending", level=1,
                               since_ms=now_ms - 60_000, history="0011",
                               summary="disk_space: over the threshold")
            pipe.hset(keys.alert(host, "disk_space"),
                      mapping=state.to_hash(host, "disk_space", now_ms))
            pipe.sadd(keys.alerts_index(), f"{host}/disk_space")
        if len(pipe) >= PIPELINE_CHUNK:
            pipe.execute()
    pipe.execute()


class Counting(redis.Redis):
    """A client that counts its round trips to Redis (commands and pipelines)."""

    round_trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        Counting.round_trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        original = pipe.execute

        def execute(*args: Any, **kwargs: Any) -> Any:
            Counting.round_trips += 1
            return original(*args, **kwargs)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


def render(app: WebApp, path: str) -> tuple[float, str, bytes]:
    """One request through the WSGI application: seconds, status and body."""
    answer: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = status

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "HTTP_ACCEPT_LANGUAGE": "en"}
    started = time.perf_counter()
    body = b"".join(app(environ, start_response))
    return time.perf_counter() - started, answer["status"], body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    keys = KeySpace()
    with tempfile.TemporaryDirectory(prefix="mtbbs-bench-web-") as directory:
        process, port = start_redis(Path(directory))
        try:
            client = Counting(port=port)
            started = time.monotonic()
            fill(client, keys, args.hosts)
            print(f"fleet: {args.hosts} hosts, {HISTORY_LINES} history lines each, "
                  f"{client.scard(keys.alerts_index())} alert states, written in "
                  f"{time.monotonic() - started:.1f} s")
            settings = CollectorSettings()
            app = WebApp(client, keys, settings, make_wsgi_app(registry_for(client, keys,
                                                                            settings)))
            ok = True
            for path in ("/", "/api/fleet"):
                render(app, path)  # warm: imports, connection
                Counting.round_trips = 0
                _, status, body = render(app, path)
                trips = Counting.round_trips
                times = []
                for _ in range(args.rounds):
                    seconds, status, body = render(app, path)
                    times.append(seconds * 1000)
                    ok = ok and status.startswith("200") and body.count(b"bbs-") >= args.hosts
                median = statistics.median(times)
                met = "met" if median <= GOAL_MS else "MISSED"
                verdict = "" if path != "/" else f"  goal <= {GOAL_MS:.0f} ms: {met}"
                print(f"{path:<11} {len(body) / 1024:7.0f} KiB  {trips} round trips to Redis  "
                      f"best {min(times):6.1f} ms  median {median:6.1f} ms  "
                      f"worst {max(times):6.1f} ms{verdict}")
            client.close()
        finally:
            process.terminate()
            process.wait(10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
