"""The installed ``mtbbs-collector`` query commands: every exit code of
``status``, its output formats, and the tables."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from collector.tables import display_width
from wire.messages import SessionInfo

pytestmark = pytest.mark.e2e

FIRST_LINE = re.compile(r"^MTBBS (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+( \| ('[^']+'=[-0-9.]+"
                        r"[a-zA-Z%]*(;[^; ]*){0,4} ?)+)?$")


def run(command: Any, env: dict[str, str], *args: str, timeout: float = 30) -> \
        subprocess.CompletedProcess[str]:
    return subprocess.run([command("mtbbs-collector"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


@pytest.fixture
def env(clean_env: dict[str, str], redis_url: str) -> dict[str, str]:
    return {**clean_env, "MTBBS_REDIS_URL": redis_url}


@pytest.fixture
def fleet(redis_client: redis.Redis, publish: Any, report: Any, event: Any,
          make_collector: Any) -> Any:
    """``fleet(*reports)``: ingest them and leave a fresh collector heartbeat."""

    def ingest(*messages: Any) -> None:
        for message in messages:
            publish(message)
        collector = make_collector(name="cli-test")
        collector.drain()
        collector.heartbeat()

    return ingest


def status(command: Any, env: dict[str, str], *args: str) -> tuple[int, str]:
    done = run(command, env, "status", *args)
    assert "Traceback" not in done.stderr + done.stdout
    return done.returncode, done.stdout


def test_ok(command: Any, env: dict[str, str], fleet: Any, report: Any) -> None:
    fleet(report("bbs-01", 1), report("bbs-02", 1, sessions=4))
    code, out = status(command, env)
    assert code == 0, out
    first = out.splitlines()[0]
    assert FIRST_LINE.match(first), first
    assert first.startswith("MTBBS OK - 2 hosts: 2 OK |")
    assert "'hosts'=2;;;0" in first and "'sessions'=7;;;0" in first
    assert "'disk_percent_max'=50.1%;90;;0;100" in first
    code, out = status(command, env, "--host", "bbs-01")
    assert code == 0
    assert out.startswith("MTBBS OK - bbs-01: all checks OK (3 sessions, disk 50.1%, RSS 45.2 "
                          "MB, seen ")
    assert "'disk_percent'=50.1%;90;;0;100" in out and "'memory_rss'=45.2MB;500;;0" in out
    assert "'last_seen_age'=" in out and ";180;300;0" in out


def test_warning_and_critical(command: Any, env: dict[str, str], fleet: Any,
                              report: Any) -> None:
    fleet(report("bbs-01", 1, disk=95.0), report("bbs-02", 1, database_ok=False),
          report("bbs-03", 1))
    code, out = status(command, env, "--host", "bbs-01")
    assert code == 1
    assert out.startswith("MTBBS WARNING - bbs-01: disk_space WARNING (95% used, limit 90%)")
    code, out = status(command, env, "--host", "bbs-02")
    assert code == 2
    assert out.startswith("MTBBS CRITICAL - bbs-02: database CRITICAL (integrity corrupt)")
    code, out = status(command, env)
    assert code == 2
    assert out.startswith("MTBBS CRITICAL - 3 hosts: 1 OK, 1 WARNING, 1 CRITICAL - bbs-02 "
                          "database CRITICAL (integrity corrupt), bbs-01 disk_space WARNING")
    assert "'hosts_critical'=1;;;0" in out


def test_stale_state_is_judged_without_a_sweep(command: Any, env: dict[str, str], fleet: Any,
                                               report: Any, tmp_path: Path) -> None:
    fleet(report("bbs-01", 1, interval=0.2), report("bbs-02", 1, interval=60))
    time.sleep(1.1)  # bbs-01 past 5 x 0.2 s; ages only grow, so this cannot flake
    code, out = status(command, env, "--host", "bbs-01")
    assert code == 2 and "stale CRITICAL (silent" in out
    assert status(command, env, "--host", "bbs-02")[0] == 0
    config = tmp_path / "c.toml"
    config.write_text("[collector]\nstale_warning_intervals = 3\n"
                      "stale_critical_intervals = 100000\n")
    code, out = status(command, env, "--host", "bbs-01", "--config", str(config))
    assert code == 1 and "stale WARNING (silent" in out
    code, out = status(command, env)
    assert code == 2 and "1 OK, 1 CRITICAL" in out and "'hosts_stale'=1;;;0" in out


def test_thresholds_override_the_agents_verdict(command: Any, env: dict[str, str],
                                                fleet: Any, report: Any) -> None:
    fleet(report("bbs-01", 1, disk=85.0))
    assert status(command, env, "--host", "bbs-01")[0] == 0
    code, out = status(command, env, "--host", "bbs-01", "-w", "80", "-c", "90")
    assert code == 1
    assert "'disk_percent'=85%;80;90;0;100" in out
    assert status(command, env, "--host", "bbs-01", "-w", "80", "-c", "84")[0] == 2
    assert status(command, env, "--host", "bbs-01", "-c", "@80:90")[0] == 2
    assert status(command, env, "-w", "~:95")[0] == 0
    code, out = status(command, env, "--host", "bbs-01", "--metric", "sessions", "-w", "2")
    assert code == 1 and "sessions WARNING (3)" in out
    code, out = status(command, env, "--host", "bbs-01", "--metric", "age", "-c", "0:0.001")
    assert code == 2 and "stale CRITICAL" in out


def test_verbose_and_json(command: Any, env: dict[str, str], fleet: Any, report: Any) -> None:
    fleet(report("bbs-01", 1, disk=95.0), report("bbs-02", 1))
    code, out = status(command, env, "-v")
    lines = out.splitlines()
    assert code == 1
    assert "|" in lines[0] and all("|" not in line for line in lines[1:])
    assert any(line.startswith("bbs-01: WARNING - last seen") for line in lines)
    assert "  disk_space: WARNING - 95% used, 249.5 GB free of 500 GB" in lines
    assert "  database: OK - integrity ok, size 5.23 MB, 8 tables" in lines
    assert any(line.startswith("collector cli-test: running, heartbeat") for line in lines)
    code, out = status(command, env, "--json")
    doc = json.loads(out)
    assert (code, doc["status"], doc["exit_code"]) == (1, "WARNING", 1)
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert hosts["bbs-01"]["checks"]["disk_space"]["percent_used"] == 95.0
    assert hosts["bbs-01"]["checks"]["disk_space"]["status"] == "WARNING"
    assert hosts["bbs-01"]["problems"] == ["disk_space WARNING (95% used, limit 90%)"]
    assert doc["collectors"][0]["name"] == "cli-test" and doc["collectors"][0]["alive"]


def test_unknown_host_and_empty_fleet(command: Any, env: dict[str, str], fleet: Any,
                                      report: Any) -> None:
    code, out = status(command, env)
    assert code == 3 and out.startswith("MTBBS UNKNOWN - no host has reported yet")
    fleet(report("bbs-01", 1))
    code, out = status(command, env, "--host", "bbs-99")
    assert (code, out.strip()) == (3, "MTBBS UNKNOWN - host bbs-99 has never reported (no "
                                   "state in Redis)")
    code, out = status(command, env, "--host", "bad host!")
    assert code == 3 and out.startswith("MTBBS UNKNOWN - configuration error: --host")
    code, out = status(command, env, "--json", "--host", "bbs-99")
    assert code == 3 and json.loads(out)["status"] == "UNKNOWN"


def test_stalled_collector_is_a_warning(command: Any, env: dict[str, str],
                                        redis_client: redis.Redis, keys: Any, fleet: Any,
                                        report: Any, tmp_path: Path) -> None:
    fleet(report("bbs-01", 1))
    config = tmp_path / "c.toml"
    config.write_text("[collector]\nstall_after_s = 0.5\n")
    time.sleep(0.7)
    code, out = status(command, env, "--config", str(config))
    assert code == 1
    assert "collector stalled (newest heartbeat" in out
    redis_client.delete(keys.collectors_index())
    code, out = status(command, env)
    assert code == 1 and "no collector has ever sent a heartbeat" in out


def test_a_cleanly_stopped_collector_is_stopped_not_stalled(
        command: Any, env: dict[str, str], redis_client: redis.Redis, keys: Any, fleet: Any,
        report: Any, make_collector: Any) -> None:
    from collector.selfmon import STOPPED_HEARTBEAT_TTL_S

    fleet(report("bbs-01", 1))
    redis_client.delete(keys.collector("cli-test"))
    redis_client.zrem(keys.collectors_index(), "cli-test")
    collector = make_collector(name="gone-clean")
    collector.heartbeat("stopped")
    # Its last heartbeat goes soon, not after a day.
    assert 0 < redis_client.ttl(keys.collector("gone-clean")) <= STOPPED_HEARTBEAT_TTL_S
    code, out = status(command, env, "-v")
    assert code == 1
    assert "no collector running (gone-clean stopped" in out
    assert "collector gone-clean: stopped, heartbeat" in out and "stalled" not in out
    # Once it expired, watch shows no row for it either.
    from stack import watch

    redis_client.delete(keys.collector("gone-clean"))
    assert [row.name for row in watch.read_collectors(redis_client, keys)] == []


def test_unreachable_redis(command: Any, clean_env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**clean_env, "MTBBS_REDIS_URL": f"redis://:secret@127.0.0.1:{port}/0"}
    code, out = status(command, env)
    assert code == 3
    assert out.strip() == (f"MTBBS UNKNOWN - cannot reach Redis at redis://:***@127.0.0.1:{port}/0 "
                           "(ConnectionError)")
    assert "secret" not in out
    for args in (["hosts"], ["history", "--host", "bbs-01", "--csv"]):
        done = run(command, env, *args)
        assert done.returncode == 3 and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_timeout(command: Any, clean_env: dict[str, str], silent_server: int) -> None:
    env = {**clean_env, "MTBBS_REDIS_URL": f"redis://127.0.0.1:{silent_server}/0"}
    code, out = status(command, env, "-t", "0.5")
    assert (code, out.strip()) == (3, "MTBBS UNKNOWN - timed out after 0.5 s")


def test_an_alarm_due_at_once_answers_unknown(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str],
                                              silent_server: int) -> None:
    """The -t alarm firing on the instruction right after it is armed (what a
    tiny -t does on a loaded machine) still ends in the UNKNOWN answer."""
    from collector import cli

    real_setitimer = signal.setitimer

    def arm_and_fire(which: int, seconds: float, *rest: float) -> tuple[float, float]:
        previous = real_setitimer(which, seconds, *rest)
        if seconds > 0:
            signal.raise_signal(signal.SIGALRM)  # its handler runs before this returns
        return previous

    for name in [k for k in os.environ if k.startswith("MTBBS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MTBBS_REDIS_URL", f"redis://127.0.0.1:{silent_server}/0")
    monkeypatch.setattr(signal, "setitimer", arm_and_fire)
    before = signal.getsignal(signal.SIGALRM)
    code = cli.cmd_status(cli.build_parser().parse_args(["status", "-t", "5"]))
    assert (code, capsys.readouterr().out.strip()) == (3, "MTBBS UNKNOWN - timed out after 5 s")
    assert signal.getsignal(signal.SIGALRM) is before
    assert real_setitimer(signal.ITIMER_REAL, 0) == (0.0, 0.0)  # nothing left armed


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["status", "--bogus"], "unrecognized arguments"),
        (["status", "-t", "soon"], "invalid float value"),
        (["status", "--metric", "cpu"], "invalid choice"),
        (["status", "-w"], "expected one argument"),
        (["status", "--log-level", "loud"], "not a logging level"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_3(command: Any, env: dict[str, str], args: list[str],
                             needle: str) -> None:
    done = run(command, env, *args)
    assert done.returncode == 3
    assert needle in done.stderr and "Traceback" not in done.stderr
    if args:
        # A plugin's usage error is a result too: Nagios reads stdout.
        first = done.stdout.splitlines()[0]
        assert FIRST_LINE.match(first) and first.startswith("MTBBS UNKNOWN - usage error: ")
        assert needle in first


def test_bad_ranges_and_config_are_unknown(command: Any, env: dict[str, str],
                                           tmp_path: Path) -> None:
    code, out = status(command, env, "-w", "20:10")
    assert code == 3 and out.startswith("MTBBS UNKNOWN - invalid threshold: '20:10'")
    config = tmp_path / "bad.toml"
    config.write_text("[collector]\nstale_warning_intervals = 'soon'\n")
    code, out = status(command, env, "--config", str(config))
    assert code == 3
    assert out.startswith("MTBBS UNKNOWN - configuration error: "
                          "collector.stale_warning_intervals")


def test_hosts_sessions_history(command: Any, env: dict[str, str], fleet: Any, report: Any,
                                event: Any, redis_client: redis.Redis, keys: Any) -> None:
    now = time.time()
    fleet(report("bbs-01", 1, disk=60.0, sessions=1),
          report("bbs-01", 2, disk=61.5, rss=50.0, sessions=2),
          report("bbs-02", 1, disk=95.0),
          event("snapshot", 1, sessions=(SessionInfo("192.0.2.1:5000", "alice", "logged_in", now),
                                         SessionInfo("192.0.2.2:5001", "\x1b[31mevil", "connected",
                                                     now),
                                         SessionInfo("192.0.2.3:5002", "山田太郎", "logged_in",
                                                     now))))
    done = run(command, env, "hosts")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["HOST", "STATUS", "LAST", "SEEN", "AGE", "STALE", "SESSIONS"]
    assert lines[1].split()[:2] == ["bbs-01", "OK"] and lines[1].split()[-2:] == ["no", "3"]
    # The AGE column reads as watch and the web page write ages.
    assert re.fullmatch(r"\d+s|\d+m\d\ds", lines[1].split()[-3])
    assert lines[2].split()[:2] == ["bbs-02", "WARNING"]
    hosts = json.loads(run(command, env, "hosts", "--json").stdout)
    assert [h["host"] for h in hosts] == ["bbs-01", "bbs-02"]

    done = run(command, env, "sessions", "--host", "bbs-01")
    assert done.returncode == 0
    assert "192.0.2.1:5000" in done.stdout and "alice" in done.stdout
    assert "\x1b" not in done.stdout and "\\x1b[31mevil" in done.stdout
    # The STATE column starts at the same display column on every line, the
    # Japanese name (two cells a character) included.
    table = done.stdout.splitlines()
    starts = {display_width(line[:re.search(r"  (STATE|logged_in|connected)", line).start()])
              for line in table}
    assert len(table) == 4 and len(starts) == 1, table
    sessions = json.loads(run(command, env, "sessions", "--host", "bbs-01", "--json").stdout)
    assert sessions[1]["user_id"] == "\x1b[31mevil"

    done = run(command, env, "history", "--host", "bbs-01", "--csv", "--iso")
    assert done.returncode == 0
    rows = [line.split(",") for line in done.stdout.splitlines()]
    assert [r[1:] for r in rows] == [["1", "60.0", "45.2"], ["2", "61.5", "50.0"]]
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", r[0]) for r in rows)
    # By default the seed's own format (date '+%Y-%m-%d %H:%M:%S', local time), so
    # lines appended to the seed's file do not mix two formats.
    tokyo = run(command, {**env, "TZ": "Asia/Tokyo"}, "history", "--host", "bbs-01", "--csv")
    seed_rows = [line.split(",") for line in tokyo.stdout.splitlines()]
    assert [r[1:] for r in seed_rows] == [r[1:] for r in rows]
    for seed_row, iso_row in zip(seed_rows, rows, strict=True):
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", seed_row[0])
        stored = datetime.strptime(iso_row[0], "%Y-%m-%dT%H:%M:%SZ")
        assert seed_row[0] == (stored + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S")
    done = run(command, env, "history", "--host", "bbs-01", "--csv", "--header", "--limit", "1")
    assert done.stdout.splitlines()[0] == "timestamp,sessions,disk_percent,memory_mb"
    assert len(done.stdout.splitlines()) == 2 and done.stdout.splitlines()[1].endswith("61.5,50.0")

    for args in (["sessions", "--host", "nope"], ["history", "--host", "nope"]):
        done = run(command, env, *args)
        assert done.returncode == 3 and "never reported" in done.stderr

    done = run(command, env, "forget", "--host", "bbs-02", "--wait", "0")
    assert done.returncode == 0
    assert redis_client.zrange(keys.hosts_index(), 0, -1) == [b"bbs-01"]
    assert not redis_client.exists(keys.host("bbs-02"), keys.host_history("bbs-02"),
                                   *keys.host_streams("bbs-02"))
    assert redis_client.zscore(keys.hosts_due(), "bbs-02") is None
    assert redis_client.zscore(keys.hosts_due(), "bbs-01") is not None


def test_dead_letters_command(command: Any, env: dict[str, str], redis_client: redis.Redis,
                              keys: Any, make_collector: Any) -> None:
    redis_client.xadd(keys.reports_stream("bbs-01"), {"m": b"\x00junk"})
    make_collector().drain()
    done = run(command, env, "dead-letters")
    assert done.returncode == 0
    assert done.stdout.startswith("1 dead letter; newest 1:")
    assert "undecodable" in done.stdout
    letters = json.loads(run(command, env, "dead-letters", "--json").stdout)
    assert letters[0]["payload_hex"] == "006a756e6b"


def checks_of(base: Any, **changes: dict[str, Any]) -> Any:
    """``base`` (a report) with some checks replaced."""
    checks = {name: dict(fields) for name, fields in base.checks.items()}
    checks.update(changes)
    return msgspec.structs.replace(base, checks=checks)


def test_a_bbs_that_does_not_answer_is_critical(command: Any, env: dict[str, str],
                                                fleet: Any, report: Any) -> None:
    down = {"healthy": False, "host": "127.0.0.1", "port": 2323, "connect_ms": None,
            "banner_ms": None, "threshold_ms": 2000.0, "error": "connection refused",
            "severity": "critical"}
    slow = {"healthy": False, "host": "127.0.0.1", "port": 2323, "connect_ms": 1.0,
            "banner_ms": 2500.0, "threshold_ms": 2000.0, "severity": "warning",
            "error": "banner after 2500 ms, threshold 2000 ms"}
    gone = {"healthy": False, "process_rss_mb": None, "system_percent": 65.3,
            "error": "no BBS process found whose program matches 'telnet_server'",
            "severity": "critical"}
    locked = {"healthy": False, "integrity": "ok", "integrity_age_s": 240.0,
              "size_bytes": 4096, "table_count": 1, "severity": "warning",
              "error": "Database is locked (still busy after 2 s): database is locked"}
    fleet(checks_of(report("bbs-01", 1), telnet=down),
          checks_of(report("bbs-02", 1), telnet=slow),
          checks_of(report("bbs-03", 1), memory=gone),
          checks_of(report("bbs-04", 1), database=locked))
    code, out = status(command, env, "--host", "bbs-01")
    assert code == 2
    assert out.startswith("MTBBS CRITICAL - bbs-01: telnet CRITICAL (not answering: "
                          "connection refused)")
    code, out = status(command, env, "--host", "bbs-02")
    assert code == 1 and "telnet WARNING (banner after 2500 ms, threshold 2000 ms)" in out
    code, out = status(command, env, "--host", "bbs-03")
    assert code == 2 and "memory CRITICAL (no BBS process: " in out
    assert "None" not in out and "?" not in out
    code, out = status(command, env, "--host", "bbs-04", "-v")
    assert code == 1 and "database WARNING (Database is locked" in out
    # The integrity result keeps its age, and a size under 1 MB is not "0 MB".
    assert "  database: WARNING - integrity ok, checked 4 min ago, size 4 KB, 1 table" in out


def test_the_first_line_is_one_line_and_verbose_says_each_thing_once(
        command: Any, env: dict[str, str], fleet: Any, report: Any) -> None:
    error = ("Database integrity check failed: *** in database main ***\nPage 5: btreeInitPage"
             " error 11\nPage 6 | never used\n")
    broken = {"healthy": False, "integrity": "*** in database main ***", "size_bytes": 5_483_520,
              "table_count": 8, "error": error, "severity": "critical"}
    fleet(checks_of(report("bbs-01", 1), database=broken))
    code, out = status(command, env, "--host", "bbs-01", "-v")
    lines = out.splitlines()
    assert code == 2 and FIRST_LINE.match(lines[0]), lines[0]
    assert "Page 5: btreeInitPage error 11 Page 6 / never used" in lines[0]
    assert sum(out.count(part) for part in ("btreeInitPage",)) == 1
    assert all("|" not in line for line in lines[1:])
    code, out = status(command, env, "-v")
    assert out.count("btreeInitPage") == 1 and FIRST_LINE.match(out.splitlines()[0])


def test_warnings_name_the_limit_they_broke(command: Any, env: dict[str, str], fleet: Any,
                                           report: Any) -> None:
    per_ip = {"healthy": False, "active_sessions": 4, "max_sessions": 100, "top_ip": "192.0.2.7",
              "top_ip_sessions": 4, "max_same_ip": 3, "severity": "warning"}
    total = {"healthy": False, "active_sessions": 101, "max_sessions": 100,
             "top_ip": "192.0.2.7", "top_ip_sessions": 1, "max_same_ip": 3}
    fleet(checks_of(report("bbs-01", 1), sessions=per_ip),
          checks_of(report("bbs-02", 1), sessions=total))
    out = status(command, env, "--host", "bbs-01")[1]
    assert "sessions WARNING (4 from 192.0.2.7, per-IP limit 3)" in out
    out = status(command, env, "--host", "bbs-02")[1]
    assert "sessions WARNING (101 active, total limit 100)" in out


def test_fleet_thresholds_are_the_hosts_own(command: Any, env: dict[str, str], fleet: Any,
                                            report: Any) -> None:
    strict = checks_of(report("bbs-01", 1, disk=70.0), disk_space={
        "healthy": True, "percent_used": 70.0, "warning_threshold": 75, "total_gb": 10.0,
        "free_gb": 3.0})
    fleet(strict)
    code, out = status(command, env)
    assert code == 0 and out.startswith("MTBBS OK - 1 host: 1 OK")
    assert "'disk_percent_max'=70%;75;;0;100" in out
