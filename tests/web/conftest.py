"""Fixtures of the web page's tests: a fleet of several hosts in a real Redis,
written the way it is in production (reports and session events on the
streams, ingested by a real collector; alert states and silences as the
alerter stores them), and the exporter's web server in a thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from alerter import silences
from alerter.state import AlertState
from collector.ingest import Collector
from collector.settings import CollectorSettings
from wire.keys import KeySpace
from wire.messages import LOGGED_IN, Report, SessionEvent, stream_fields

HOSTILE = "<img src=x onerror=alert(1)>"
# Every host of the fleet and the status it ends up with.
EXPECTED_STATUS = {"bbs-01": "OK", "bbs-02": "WARNING", "bbs-03": "CRITICAL",
                   "bbs-04": "OK"}
HISTORY_POINTS = 288  # one day of 5-minute reports
STEP_MS = 300_000


def make_report(host: str, seq: int, *, disk: float = 50.0, rss: float = 45.0,
                sessions: int = 2, database_ok: bool = True) -> Report:
    """A report with the agent's usual checks."""
    return Report(
        host=host, agent_version="0.1.0", epoch=1, seq=seq, observed_at=time.time(),
        interval=60.0, dropped=0,
        checks={
            "database": ({"healthy": True, "integrity": "ok", "size_mb": 5.2, "path": "x.db"}
                         if database_ok else
                         {"healthy": False, "integrity": "corrupt", "path": "x.db",
                          "error": "database disk image is malformed"}),
            "sessions": {"healthy": True, "active_sessions": sessions, "max_sessions": 20},
            "disk_space": {"healthy": disk < 90, "percent_used": disk, "free_gb": 12.5,
                           "warning_threshold": 90},
            "memory": {"healthy": rss < 500, "process_rss_mb": rss, "system_percent": 40.0,
                       "warning_threshold_process_mb": 500},
        },
    )


def login(host: str, seq: int, client_id: str, user_id: str) -> SessionEvent:
    """A session event: ``user_id`` logged in from ``client_id``."""
    return SessionEvent(host=host, epoch=1, seq=seq, observed_at=time.time(), kind=LOGGED_IN,
                        client_id=client_id, user_id=user_id, state="logged_in",
                        connected_at=time.time() - 60)


@dataclass(frozen=True)
class Fleet:
    """What the fixture wrote, for the tests' expectations."""

    keys: KeySpace
    now_ms: int


def populate(client: redis.Redis, keys: KeySpace | None = None, collect: bool = True) -> Fleet:
    """Four hosts (OK, WARNING, CRITICAL, OK with a hostile user id), their
    sessions, a day of history each, alert states and a silence.

    With ``collect`` a collector in this process ingests the reports; without,
    a running ``mtbbs-collector run`` is expected to, and this waits for it.
    """
    keys = keys or KeySpace()
    reports = [
        make_report("bbs-01", 1, sessions=2),
        make_report("bbs-02", 1, disk=95.5, sessions=1),
        make_report("bbs-03", 1, database_ok=False, sessions=0, rss=120.0),
        make_report("bbs-04", 1, sessions=2, rss=80.0),
    ]
    for report in reports:
        client.xadd(keys.reports_stream(report.host), dict(stream_fields(report)))
    for event in (login("bbs-04", 1, "192.0.2.7:4000", HOSTILE),
                  login("bbs-04", 2, "192.0.2.8:4001", "guest"),
                  login("bbs-01", 1, "192.0.2.9:4002", "sysop")):
        client.xadd(keys.sessions_stream(event.host), dict(stream_fields(event)))
    if collect:
        collector = Collector(client, keys, CollectorSettings(evaluate=False, block_ms=50),
                              name="web-test")
        collector.drain()
        collector.heartbeat()
    else:
        wait_until(lambda: client.zcard(keys.hosts_index()) == len(EXPECTED_STATUS)
                   and client.hlen(keys.host_sessions("bbs-04")) == 2)
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    # A day of history in the collector's CSV format (newest first), drawn
    # as gentle waves so that the charts have something to show.
    for index, host in enumerate(("bbs-01", "bbs-02", "bbs-03", "bbs-04")):
        lines = []
        for point in range(HISTORY_POINTS):
            at = now_ms - point * STEP_MS
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at / 1000))
            sessions = (point // 12 + index) % 6
            disk = 40 + index * 15 + (point % 50) / 10
            rss = 60 + index * 20 + (point % 30)
            lines.append(f"{stamp},{sessions},{disk:.1f},{rss:.1f}")
        client.delete(keys.host_history(host))
        client.rpush(keys.host_history(host), *lines)
    alerts = {
        ("bbs-03", "database"): AlertState(state="firing", level=2, since_ms=now_ms - 600_000,
                                           firing_since_ms=now_ms - 600_000, history="0122",
                                           summary="database: integrity corrupt"),
        ("bbs-02", "disk_space"): AlertState(state="pending", level=1, since_ms=now_ms - 60_000,
                                             history="001", summary="disk_space: 95.5% used"),
        ("bbs-04", "telnet"): AlertState(state="resolved", level=1,
                                         since_ms=now_ms - 7_200_000, history="00111100",
                                         summary="telnet: banner after 2300 ms"),
        ("bbs-01", "memory"): AlertState(state="resolved", level=1, since_ms=now_ms - 3_600_000,
                                         history="0110", summary="memory: back to normal"),
    }
    for (host, check), state in alerts.items():
        client.hset(keys.alert(host, check), mapping=state.to_hash(host, check, now_ms))
        client.sadd(keys.alerts_index(), f"{host}/{check}")
    silences.add(client, keys, silences.make_silence(
        host="bbs-0*", check="disk_space", now_ms=now_ms, duration_s=7200,
        reason="disk swap on <b>Tuesday</b>", author="sysop"))
    silences.add(client, keys, silences.make_silence(
        host="other-*", check=None, now_ms=now_ms, duration_s=7200, reason="elsewhere"))
    return Fleet(keys, now_ms)


@pytest.fixture
def fleet(redis_client: redis.Redis) -> Fleet:
    """The populated fleet in the flushed shared Redis."""
    return populate(redis_client)


def serve_app(app: Any) -> tuple[str, Callable[[], None]]:
    """Serve a WSGI app on a free loopback port; its base URL and a stop function."""
    from collector.web.server import start

    server, thread = start(app, "127.0.0.1", 0)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return f"http://127.0.0.1:{server.server_port}", stop


def make_app(client: Any, password: str | None = None) -> Any:
    """The exporter's WSGI application over ``client``."""
    from prometheus_client.exposition import make_wsgi_app

    from collector.exporter import registry_for
    from collector.web.server import WebApp

    settings = CollectorSettings()
    return WebApp(client, KeySpace(), settings,
                  make_wsgi_app(registry_for(client, KeySpace(), settings)), password)


@pytest.fixture
def web(redis_client: redis.Redis, fleet: Fleet) -> Iterator[str]:
    """The base URL of the web server over the populated fleet."""
    url, stop = serve_app(make_app(redis_client))
    try:
        yield url
    finally:
        stop()


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds (fails the test after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)



@pytest.fixture
def support() -> SimpleNamespace:
    """This file's helpers and constants for the test modules, which cannot
    import a conftest under pytest's importlib mode."""
    return SimpleNamespace(populate=populate, make_app=make_app, serve_app=serve_app,
                           wait_until=wait_until, HOSTILE=HOSTILE,
                           EXPECTED_STATUS=EXPECTED_STATUS)
