"""watch: sparklines, and the picture it draws of state written through wire."""

from __future__ import annotations

import io
import json
import time

import pytest
import redis

from stack import watch
from stack.cli import main
from wire.keys import KeySpace
from wire.messages import Report, SessionInfo
from wire.state import STALE_WARNING, report_fields, session_text


def make_report(host: str, *, disk: float, rss: float, sessions: int = 2,
                db_ok: bool = True) -> Report:
    return Report(
        host=host, agent_version="0.1.0", epoch=1, seq=7, observed_at=time.time(),
        interval=5.0,
        checks={
            "database": {"healthy": db_ok, "integrity": "ok" if db_ok else "corrupt"},
            "sessions": {"healthy": True, "active_sessions": sessions},
            "disk_space": {"healthy": disk < 90, "percent_used": disk},
            "memory": {"healthy": True, "process_rss_mb": rss, "system_percent": 40.0},
        },
    )


def write_host(client: redis.Redis, keys: KeySpace, report: Report, *, stale: str = "no",
               sessions: dict[str, str | None] | None = None,
               history: list[str] | None = None) -> None:
    now_ms = int(time.time() * 1000)
    client.hset(keys.host(report.host), mapping=report_fields(report, now_ms - 3000, stale))
    client.zadd(keys.hosts_index(), {report.host: now_ms - 3000})
    for client_id, user in (sessions or {}).items():
        info = SessionInfo(client_id, user, "logged_in" if user else "connected", time.time())
        client.hset(keys.host_sessions(report.host), client_id, session_text(info))
    for line in history or []:
        client.rpush(keys.host_history(report.host), line)


def test_sparkline_scales_and_keeps_gaps() -> None:
    assert watch.sparkline([0, 50, 100], low=0, high=100) == "▁▅█"
    assert watch.sparkline([1, 2, None, 8]) == "▁▂ █"
    assert watch.sparkline([]) == ""
    assert watch.sparkline([5, 5, 5]) == "▁▁▁"
    # Values outside the scale are clipped, not an error.
    assert watch.sparkline([-5, 500], low=0, high=100) == "▁█"


def test_age_text() -> None:
    assert watch.age_text(4.9) == "4s"
    assert watch.age_text(125) == "2m05s"
    assert watch.age_text(3 * 3600 + 7 * 60) == "3h07m"
    assert watch.age_text(2 * 86400 + 4 * 3600) == "2d04h"
    assert watch.age_text(-3) == "0s"


def test_history_is_reversed_to_oldest_first_and_tolerates_garbage() -> None:
    lines = [b"2026-11-28T10:30:50Z,3,50.5,45.2", b"garbage", "2026-11-28T10:30:40Z,1,,44"]
    assert watch.parse_history(lines) == [(1.0, None, 44.0), (None, None, None),
                                          (3.0, 50.5, 45.2)]


def test_clean_removes_terminal_control_characters() -> None:
    assert watch.clean("evil\x1b[2Jname\n") == "evil?[2Jname?"


def test_snapshot_reads_hosts_sessions_alerts_and_collectors(redis_client: redis.Redis) -> None:
    keys = KeySpace("t:")
    write_host(redis_client, keys, make_report("bbs-01", disk=92.5, rss=45.2),
               sessions={"10.0.0.1:5000": "guest", "10.0.0.2:5001": "sysop",
                         "10.0.0.3:5002": None},
               history=["2026-11-28T10:30:50Z,3,92.5,45.2", "2026-11-28T10:30:40Z,1,92.0,40"])
    write_host(redis_client, keys, make_report("bbs-02", disk=10.0, rss=20.0, sessions=4))
    redis_client.sadd(keys.alerts_index(), "bbs-01/disk_space", "bbs-02/memory")
    redis_client.hset(keys.alert("bbs-01", "disk_space"),
                      mapping={"state": "firing", "value": "92.5", "since": "2026-11-28T10:00Z"})
    redis_client.hset(keys.alert("bbs-02", "memory"), mapping={"state": "resolved"})
    now_ms = int(time.time() * 1000)
    redis_client.zadd(keys.collectors_index(), {"collector-a": now_ms})
    redis_client.hset(keys.collector("collector-a"), mapping={
        "pending": "0", "lag": "2", "streams": "6", "collectors": "2", "heartbeat": "x"})

    snapshot = watch.read_snapshot(redis_client, keys, history_points=10)

    assert [h.host for h in snapshot.hosts] == ["bbs-01", "bbs-02"]  # worst first
    first, second = snapshot.hosts
    assert first.status.name == "WARNING"
    assert (first.sessions, first.guests) == (3, 1)
    assert first.disk_percent == 92.5 and first.memory_mb == 45.2
    assert first.history == [(1.0, 92.0, 40.0), (3.0, 92.5, 45.2)]
    # Without a sessions hash, the agent's count stands in.
    assert (second.sessions, second.guests) == (4, 0)
    assert [(a.host, a.check, a.state) for a in snapshot.alerts] == [
        ("bbs-01", "disk_space", "firing")]
    assert snapshot.collectors[0].name == "collector-a"
    assert snapshot.collectors[0].details == {"lag": "2", "pending": "0", "streams": "6",
                                              "collectors": "2", "heartbeat": "x"}
    # The streams it reads and the collectors sharing the hosts come first.
    out = io.StringIO()
    watch.Console(file=out, width=160, color_system=None).print(
        watch.collectors_table(snapshot))
    assert "streams=6 collectors=2 lag=2 pending=0" in out.getvalue()


def test_watch_once_prints_plain_text(redis_url: str, redis_client: redis.Redis,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    keys = KeySpace()
    write_host(redis_client, keys, make_report("bbs-01", disk=50.0, rss=45.2, db_ok=False),
               stale=STALE_WARNING, sessions={"10.0.0.1:5000": "guest"},
               history=[f"2026-11-28T10:30:{50 - i}Z,{i % 4},{50 + i},{40 + i}"
                        for i in range(12)])
    redis_client.sadd(keys.alerts_index(), "bbs-01/database")
    redis_client.hset(keys.alert("bbs-01", "database"), mapping={"state": "firing"})

    assert main(["watch", "--once", "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # not a terminal: no colour codes
    row = next(line for line in out.splitlines() if "bbs-01" in line and "CRITICAL" in line)
    assert "warning" in row
    assert any(bar in row for bar in watch.BARS)
    assert "45.2" in row and "50" in row
    assert "FIRING" in out and "database" in out
    assert "no collector heartbeat" in out


def test_watch_once_on_an_empty_redis_says_so(redis_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", "--once", "--redis-url", redis_url]) == 0
    assert "no host has reported yet" in capsys.readouterr().out


def test_watch_once_without_redis_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", "--once", "--redis-url", "redis://127.0.0.1:1/0"]) == 3
    out = capsys.readouterr().out
    assert "cannot read Redis" in out and "retrying" not in out


def test_host_names_and_users_cannot_inject_markup(redis_client: redis.Redis) -> None:
    keys = KeySpace()
    write_host(redis_client, keys, make_report("bbs-01", disk=1.0, rss=1.0))
    redis_client.sadd(keys.alerts_index(), "bbs-01/disk_space")
    redis_client.hset(keys.alert("bbs-01", "disk_space"),
                      mapping={"state": "firing", "note": "[bold red]x[/] \x1b[31m"})
    out = io.StringIO()
    snapshot = watch.read_snapshot(redis_client, keys)
    watch.make_console(out).print(watch.render(snapshot, "test"))
    text = out.getvalue()
    assert "note=[bold red]x[/] ?[31m" in text


def test_live_mode_refreshes_until_stopped(redis_client: redis.Redis) -> None:
    """On a terminal, watch redraws in place; the stop event ends it."""
    import threading

    keys = KeySpace()
    write_host(redis_client, keys, make_report("bbs-01", disk=1.0, rss=1.0))
    stop = threading.Event()
    out = io.StringIO()
    out.isatty = lambda: True  # type: ignore[method-assign]
    calls = []
    original = watch.read_snapshot

    def counting(*args: object, **kwargs: object) -> watch.Snapshot:
        calls.append(1)
        if len(calls) >= 3:
            stop.set()
        return original(*args, **kwargs)  # type: ignore[arg-type]

    watch.read_snapshot = counting  # type: ignore[assignment]
    try:
        assert watch.run(redis_client, keys, "test", interval=0.05, once=False,
                         history_points=5, out=out, stop=stop) == 0
    finally:
        watch.read_snapshot = original  # type: ignore[assignment]
    assert len(calls) >= 3
    assert out.getvalue().count("bbs-01") >= 3
    assert "\x1b[?1049h" not in out.getvalue()  # never the alternate screen


def test_json_of_sessions_that_is_not_json_is_skipped() -> None:
    assert watch._sessions(["not json", json.dumps({"user_id": "guest"})]) == (2, 1)


@pytest.mark.parametrize("width", [80, 100, 132, 200])
def test_rows_fit_the_console_without_truncation(width: int) -> None:
    from wire.status import Status

    now = int(time.time() * 1000)
    rows = [watch.HostRow("bbs-with-a-long-name-01", Status.CRITICAL, now - 3000, "critical",
                          12, 3, 92.5, 45.2, [(i % 5, 50 + i, 40.0) for i in range(30)])]
    snapshot = watch.Snapshot(now, rows, [], [])
    out = io.StringIO()
    watch.Console(file=out, width=width, color_system=None).print(
        watch.render(snapshot, "test", width))
    text = out.getvalue()
    assert "bbs-with-a-long-name-01" in text
    if width >= 120:
        assert "…" not in text
        assert "critical" in text and "92.5" in text and "45.2" in text
    bars = watch.spark_width(snapshot, width)
    assert (bars > 0) == (width >= 100)
    heading = next(line for line in text.splitlines() if line.startswith("host"))
    if bars:
        # Every sparkline column is headed, the sessions one beside its figure.
        assert heading.split() == ["host", "status", "seen", "stale", "sess", "trend", "guest",
                                   "disk%", "trend", "rss", "MB", "trend"]
        row = next(line for line in text.splitlines() if line.startswith("bbs-"))
        assert row.index("critical") < row.index("12") < heading.index("trend") \
            <= row.index("▁") < heading.index("guest")
    else:
        assert "trend" not in heading


def test_a_frame_of_a_big_fleet_lines_up() -> None:
    from wire.status import Status

    now = int(time.time() * 1000)
    rows = [watch.HostRow(f"bbs-{i:04d}" + "x" * (i % 7), Status.OK, now - 1000 * i, "no",
                          i, i % 3, 50.0 + i % 10, None if i % 5 == 0 else 40.0 + i,
                          [(j, 50.0, 40.0) for j in range(8)]) for i in range(300)]
    out = io.StringIO()
    watch.Console(file=out, width=160, color_system=None).print(
        watch.render(watch.Snapshot(now, rows, [], []), "test", 160))
    table = [line for line in out.getvalue().splitlines() if line.startswith(("host", "bbs-"))]
    assert len(table) == 301
    # Right-aligned figures end under the end of their header on every line,
    # whatever the length of the host ids before them.
    heading = table[0]
    for header in ("seen", "sess", "disk%", "MB"):
        end = heading.index(header) + len(header)
        assert all(line[end - 1] != " " and line[end:end + 1] in (" ", "") for line in table[1:]), \
            header
    assert "None" not in out.getvalue()


def test_alerts_as_the_alerter_writes_them(redis_client: redis.Redis) -> None:
    state_module = pytest.importorskip("alerter.state")
    keys = KeySpace()
    now = int(time.time() * 1000)
    firing = state_module.AlertState(state="firing", level=2, since_ms=now - 60_000,
                                     firing_since_ms=now - 60_000, history="0122",
                                     summary="disk_space 92.5% used")
    redis_client.hset(keys.alert("bbs-01", "disk_space"),
                      mapping=firing.to_hash("bbs-01", "disk_space", now))
    resolved = state_module.AlertState(state="resolved", level=1, since_ms=now)
    redis_client.hset(keys.alert("bbs-02", "memory"),
                      mapping=resolved.to_hash("bbs-02", "memory", now))
    redis_client.sadd(keys.alerts_index(), "bbs-01/disk_space", "bbs-02/memory")
    (alert,) = watch.read_alerts(redis_client, keys)
    assert (alert.host, alert.check, alert.state) == ("bbs-01", "disk_space", "firing")
    assert list(alert.details)[:3] == ["severity", "since", "summary"]
    assert alert.details["summary"] == "disk_space 92.5% used"
    assert "history" not in alert.details and "flapping" not in alert.details


def test_only_the_history_the_console_can_show_is_read(redis_client: redis.Redis) -> None:
    keys = KeySpace("t:")
    lines = [f"2026-11-28T10:{n // 60:02d}:{n % 60:02d}Z,{n},50,40" for n in range(40)]
    write_host(redis_client, keys, make_report("bbs-01", disk=50.0, rss=40.0),
               history=list(reversed(lines)))
    full = watch.read_snapshot(redis_client, keys, history_points=30).hosts[0].history
    assert len(full) == 30
    wide = watch.read_snapshot(redis_client, keys, history_points=30, width=120).hosts[0].history
    assert 0 < len(wide) < 30
    assert wide == full[-len(wide):]  # the newest points
    narrow = watch.read_snapshot(redis_client, keys, history_points=30, width=60)
    assert narrow.hosts[0].history == []
