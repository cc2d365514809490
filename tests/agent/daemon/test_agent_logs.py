"""What a real ``mtbbs-agent run`` logs over many cycles: changes, not cycles.

Each test runs the agent as a process against a real redis-server with a
short interval, waits for a number of reports on the stream (or in the
spool) rather than for a time, stops it with SIGTERM and reads its stderr.
"""

from __future__ import annotations

import re
import signal
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.spool import SpoolError, inspect
from wire.messages import Report

pytestmark = pytest.mark.e2e

LINE = re.compile(r"^\S+ \S+ \[(?P<level>[A-Z]+)\] (?P<logger>[\w.]+): (?P<message>.*)$")



class AgentRun:
    """One ``mtbbs-agent run`` process whose stderr goes to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as err:
            self.process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                            stderr=err)

    def stop(self) -> list[tuple[str, str, str]]:
        """SIGTERM, wait for exit 0; the log as (level, logger, message) lines."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(30) == 0, self.log.read_text()
        return self.lines()

    def lines(self) -> list[tuple[str, str, str]]:
        parsed = []
        for line in self.log.read_text().splitlines():
            match = LINE.match(line)
            assert match, f"not a log line: {line!r}"
            parsed.append((match["level"], match["logger"], match["message"]))
        return parsed


@pytest.fixture
def run_agent(command: Callable[[str], str], tmp_path: Path, bbs_db: Path,
              bbs_process: subprocess.Popen[bytes], clean_env: dict[str, str],
              ) -> Iterator[Callable[..., AgentRun]]:
    """``run_agent(url, *extra, env={...})``: start an agent of host bbs-test."""
    runs: list[AgentRun] = []

    def start(url: str, *extra: str, env: dict[str, str] | None = None) -> AgentRun:
        args = [command("mtbbs-agent"), "run", "--redis-url", url, "--host", "bbs-test",
                "--db", str(bbs_db), "--data-dir", str(bbs_db.parent),
                "--pid", str(bbs_process.pid), "--spool", str(tmp_path / "spool.db"),
                "--interval", "0.1", "--integrity-interval", "0", *extra]
        run = AgentRun(args, dict(clean_env, **(env or {})), tmp_path / f"agent{len(runs)}.log")
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait(10)


def messages(lines: list[tuple[str, str, str]], logger: str) -> list[str]:
    return [message for _level, name, message in lines if name == logger]


def test_healthy_cycles_log_nothing_per_cycle(
        redis_url: str, redis_client: Any, run_agent: Callable[..., AgentRun],
        read_reports: Callable[..., list[Report]], wait: Callable[..., Any]) -> None:
    agent = run_agent(redis_url, "--no-probe")
    wait(lambda: len(read_reports(redis_client)) >= 15)
    lines = agent.stop()

    assert [(level, name) for level, name, _ in lines] == [
        ("INFO", "agent.spool"), ("INFO", "agent.daemon"), ("INFO", "agent.healthlog"),
        ("INFO", "agent.daemon")], lines
    _spool, started, health, stopping = (message for _, _, message in lines)
    assert started.startswith("Agent started: host=bbs-test, interval=0.1s")
    assert f"redis={redis_url} prefix=mtbbs:" in started and "probe off" in started
    assert health == "Health: all 5 checks healthy (database, sessions, disk_space, memory, " \
                     "uptime)"
    assert re.fullmatch(r"Agent stopping after \d+ cycles", stopping)


def test_debug_shows_the_full_report_of_every_cycle(
        redis_url: str, redis_client: Any, run_agent: Callable[..., AgentRun],
        read_reports: Callable[..., list[Report]], wait: Callable[..., Any]) -> None:
    agent = run_agent(redis_url, "--no-probe", "--log-level", "DEBUG")
    wait(lambda: len(read_reports(redis_client)) >= 5)
    lines = agent.stop()
    reports = read_reports(redis_client)

    full = [m for level, name, m in lines
            if (level, name) == ("DEBUG", "agent.healthlog") and m.startswith("Full health")]
    # Every report made is logged in full; the last ones may not be on the stream
    # yet when the agent is stopped.
    assert len(full) >= len(reports) >= 5
    assert "'disk_space': {'healthy': True" in full[0] and "'sessions': {" in full[0]
    assert len(messages(lines, "agent.healthlog")) == len(full) + 1


def test_a_change_is_one_line_and_so_is_the_recovery(
        redis_url: str, redis_client: Any, run_agent: Callable[..., AgentRun],
        read_reports: Callable[..., list[Report]], wait: Callable[..., Any],
        bbs_db: Path) -> None:
    agent = run_agent(redis_url, "--no-probe")

    def reports_after(count: int, database_healthy: bool, more: int) -> int:
        """Wait for ``more`` reports past ``count`` with the database in that state."""
        def seen() -> int | None:
            reports = read_reports(redis_client)[count:]
            states = [r.checks["database"]["healthy"] for r in reports]
            if database_healthy in states and len(states) - states.index(database_healthy) > more:
                return count + len(reports)
            return None
        return int(wait(seen))

    count = reports_after(0, True, 3)
    aside = bbs_db.with_name("moved-away.db")
    bbs_db.rename(aside)
    count = reports_after(count, False, 5)
    aside.rename(bbs_db)
    reports_after(count, True, 5)
    lines = agent.stop()

    health = [(level, m) for level, name, m in lines if name == "agent.healthlog"]
    assert len(health) == 3, lines
    assert health[0] == ("INFO", "Health: all 5 checks healthy (database, sessions, "
                                 "disk_space, memory, uptime)")
    assert health[1] == ("ERROR", f"database: healthy -> unhealthy (Database file not found: "
                                  f"{bbs_db})")
    level, recovered = health[2]
    assert level == "INFO"
    assert re.fullmatch(r"database: unhealthy -> healthy \(integrity ok\); all checks healthy "
                        r"again after \d+ s", recovered), recovered


def listen_with_banner(port: int) -> tuple[socket.socket, threading.Event]:
    """A telnet-like server on ``port`` that greets each caller; set the event to stop it."""
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"\xff\xfb\x01Welcome\r\n")
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener, stop


def test_a_telnet_port_that_starts_listening(
        redis_url: str, redis_client: Any, run_agent: Callable[..., AgentRun],
        read_reports: Callable[..., list[Report]], wait: Callable[..., Any],
        dead_port: int) -> None:
    agent = run_agent(redis_url, "--probe-port", str(dead_port))

    def telnet_states() -> list[bool]:
        return [bool(r.checks["telnet"]["healthy"]) for r in read_reports(redis_client)]

    wait(lambda: len(telnet_states()) >= 5)
    _listener, stop = listen_with_banner(dead_port)
    try:
        wait(lambda: telnet_states()[-5:] == [True] * 5)
    finally:
        stop.set()
    lines = agent.stop()

    health = [(level, m) for level, name, m in lines if name == "agent.healthlog"]
    # A BBS that does not answer is critical: logged at ERROR.
    assert health[0] == ("ERROR", "telnet: unhealthy (connection refused)")
    level, recovered = health[1]
    assert level == "INFO" and re.fullmatch(
        r"telnet: unhealthy -> healthy \(banner after [\d.]+ ms, limit 2000 ms\); all checks "
        r"healthy again after \d+ s", recovered), recovered
    # Stopping the listener may make the last cycles fail again: that is one more change.
    assert all(m.startswith("telnet: healthy -> unhealthy") for _, m in health[2:]), health
    assert len(health) <= 3


def dropped(spool: Path) -> int:
    """Reports the agent's spool has dropped; 0 until the agent has created it."""
    try:
        return inspect(spool, 10).dropped_total if spool.exists() else 0
    except (sqlite3.Error, SpoolError):
        # The file exists a moment before its tables do.
        return 0


def test_a_redis_outage_is_logged_once_each_way_with_the_spool_levels(
        redis_server_factory: Callable[..., Any], dead_port: int, tmp_path: Path,
        run_agent: Callable[..., AgentRun], read_reports: Callable[..., list[Report]],
        wait: Callable[..., Any]) -> None:
    env = {"MTBBS_AGENT_SPOOL_MAX_REPORTS": "10", "MTBBS_AGENT_BACKOFF_INITIAL": "0.05",
           "MTBBS_AGENT_BACKOFF_MAX": "0.2"}
    agent = run_agent(f"redis://127.0.0.1:{dead_port}/0", "--no-probe", env=env)
    spool = tmp_path / "spool.db"
    # Several failed attempts, and the spool full and dropping for a while.
    wait(lambda: dropped(spool) >= 5)
    server = redis_server_factory(port=dead_port)
    wait(lambda: len(read_reports(server.client())) >= 15)
    lines = agent.stop()

    publisher = messages(lines, "agent.publisher")
    assert len(publisher) == 2, publisher
    assert publisher[0].startswith("Redis unreachable (ConnectionError: ")
    assert re.fullmatch(r"Redis reachable again after \d+ s \(\d+ failed attempts\); \d+ "
                        r"spooled reports delivered", publisher[1]), publisher[1]

    spooled = messages(lines, "agent.spool")
    assert spooled[0].startswith("New spool")
    assert spooled[1:3] == ["Spool 50% full: 5 of at most 10 reports wait for Redis",
                            "Spool 90% full: 9 of at most 10 reports wait for Redis"]
    assert spooled[3].startswith("Spool full (10 reports): dropped the 1 oldest")
    assert re.fullmatch(r"Spool has room again; \d+ reports were dropped while it was full",
                        spooled[4]), spooled
    assert len(spooled) == 5, spooled
    # A healthy host: its health is told once, whatever Redis does.
    assert len(messages(lines, "agent.healthlog")) == 1
