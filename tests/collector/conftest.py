"""Fixtures of the collector tests: messages built through the wire contract,
collectors with fast settings, and the real redis-cli."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from collector.ingest import Collector
from collector.settings import CollectorSettings
from wire.keys import KeySpace
from wire.messages import Report, SessionEvent, SessionInfo, stream_fields


def make_report(host: str = "bbs-01", seq: int = 1, *, epoch: int = 1, disk: float = 50.1,
                rss: float = 45.2, sessions: int = 3, database_ok: bool = True,
                interval: float = 60.0, observed_at: float | None = None,
                dropped: int = 0) -> Report:
    """A report with the seed's four checks."""
    return Report(
        host=host, agent_version="0.1.0", epoch=epoch, seq=seq,
        observed_at=time.time() if observed_at is None else observed_at,
        interval=interval, dropped=dropped,
        checks={
            "database": {"healthy": database_ok, "integrity": "ok" if database_ok else "corrupt",
                         "size_bytes": 5_483_520, "size_mb": 5.23, "table_count": 8,
                         "path": "data/mtbbs.db"},
            "sessions": {"healthy": True, "active_sessions": sessions,
                         "sessions": ({"client_id": "192.0.2.1:5000", "user_id": "guest",
                                       "state": "logged_in",
                                       "connected_at": "2026-01-01T00:00:00Z"},),
                         "max_sessions": 100},
            "disk_space": {"healthy": disk < 90, "total_gb": 500.0, "used_gb": 250.5,
                           "free_gb": 249.5, "percent_used": disk, "warning_threshold": 90},
            "memory": {"healthy": rss < 500, "process_rss_mb": rss, "process_vms_mb": 123.4,
                       "system_percent": 65.3, "warning_threshold_process_mb": 500},
        },
    )


def make_event(kind: str, seq: int, *, host: str = "bbs-01", epoch: int = 1,
               client_id: str = "", user_id: str | None = None, state: str | None = None,
               connected_at: float | None = None,
               sessions: tuple[SessionInfo, ...] = ()) -> SessionEvent:
    """A session event."""
    return SessionEvent(host=host, epoch=epoch, seq=seq, observed_at=time.time(), kind=kind,
                        client_id=client_id, user_id=user_id, state=state,
                        connected_at=connected_at, sessions=sessions)


FAST = {
    "block_ms": 50,
    "claim_min_idle_s": 0.2,
    "claim_interval_s": 0.1,
    "sweep_interval_s": 0.05,
    "heartbeat_interval_s": 0.1,
    "discovery_interval_s": 0.05,
    "max_backoff_s": 0.2,
}


@pytest.fixture
def keys() -> KeySpace:
    """The default key space."""
    return KeySpace()


@pytest.fixture
def publish(redis_client: redis.Redis, keys: KeySpace) -> Callable[..., bytes]:
    """``publish(message)`` adds a message to its stream the way producers do."""

    def add(message: Report | SessionEvent, **extra: Any) -> bytes:
        stream = (keys.reports_stream(message.host) if isinstance(message, Report)
                  else keys.sessions_stream(message.host))
        fields: dict[str, Any] = dict(stream_fields(message))
        fields.update(extra)
        return redis_client.xadd(stream, fields)  # type: ignore[no-any-return]

    return add


@pytest.fixture
def make_collector(redis_client: redis.Redis, keys: KeySpace) -> Callable[..., Collector]:
    """``make_collector(name=..., **settings)``: a collector with fast settings."""

    def make(name: str = "test-collector", host_keys: dict[str, bytes] | None = None,
             client: Any = None, **settings: Any) -> Collector:
        values = dict(FAST)
        values.update(settings)
        return Collector(client or redis_client, keys, CollectorSettings(**values), name=name,
                         host_keys=host_keys)

    return make


@pytest.fixture
def cli(redis_server: Any) -> Callable[..., str]:
    """``cli("HGET", key, field)`` runs the real redis-cli against the test server."""

    def run(*args: str) -> str:
        done = subprocess.run([redis_server.cli, "-p", str(redis_server.port), *args],
                              capture_output=True, text=True, timeout=10, check=True)
        return done.stdout

    return run


@pytest.fixture
def report() -> Callable[..., Report]:
    """``report(host, seq, disk=..., ...)`` builds a report (see make_report)."""
    return make_report


@pytest.fixture
def event() -> Callable[..., SessionEvent]:
    """``event(kind, seq, client_id=..., ...)`` builds a session event."""
    return make_event
