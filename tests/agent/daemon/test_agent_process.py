"""``mtbbs-agent`` as a real process: --once exit codes, SIGTERM flushes and
exits 0, SIGKILL loses nothing spooled, the spool command, usage errors."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.spool import SpoolError, inspect
from wire.messages import Report

pytestmark = pytest.mark.e2e



@pytest.fixture
def agent_cmd(command: Callable[[str], str], tmp_path: Path, bbs_db: Path,
              bbs_process: subprocess.Popen[bytes]) -> Callable[..., list[str]]:
    """``agent_cmd(url, "--once")``: an mtbbs-agent run command line for the test host."""

    def build(url: str, *extra: str) -> list[str]:
        return [command("mtbbs-agent"), "run", "--redis-url", url, "--host", "bbs-test",
                "--db", str(bbs_db), "--data-dir", str(bbs_db.parent),
                "--pid", str(bbs_process.pid), "--spool", str(tmp_path / "spool.db"),
                "--no-probe", "--interval", "0.2", *extra]

    return build


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; killed after it if still running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def spooled(spool: Path) -> int:
    """Reports waiting in the agent's spool; 0 until the agent has created it."""
    try:
        return inspect(spool, 10_000).pending if spool.exists() else 0
    except (sqlite3.Error, SpoolError):
        # The file exists a moment before its tables do (inspect reports
        # that as a SpoolError).
        return 0


def start(processes: list[subprocess.Popen[bytes]], args: list[str],
          env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    processes.append(process)
    return process


def test_once_exits_like_the_health_check(
        redis_url: str, agent_cmd: Callable[..., list[str]], clean_env: dict[str, str],
        redis_client: Any, read_reports: Callable[..., list[Report]], tmp_path: Path) -> None:
    healthy = subprocess.run(agent_cmd(redis_url, "--once"), env=clean_env,
                             capture_output=True, text=True, timeout=60)
    assert healthy.returncode == 0, healthy.stderr
    assert "Health: all 5 checks healthy" in healthy.stderr

    warning = subprocess.run(agent_cmd(redis_url, "--once", "--disk-threshold", "0"),
                             env=clean_env, capture_output=True, text=True, timeout=60)
    assert warning.returncode == 1, warning.stderr
    assert "[WARNING] agent.healthlog: disk_space: unhealthy (" in warning.stderr

    critical = subprocess.run(agent_cmd(redis_url, "--once", "--db",
                                        str(tmp_path / "missing.db")),
                              env=clean_env, capture_output=True, text=True, timeout=60)
    assert critical.returncode == 2, critical.stderr

    reports = read_reports(redis_client)
    assert [r.seq for r in reports] == [1, 2, 3]
    assert [r.checks["disk_space"]["healthy"] for r in reports] == [True, False, True]
    assert reports[2].checks["database"]["healthy"] is False


def test_sigterm_flushes_the_spool_and_exits_0(
        redis_server_factory: Callable[..., Any], dead_port: int,
        agent_cmd: Callable[..., list[str]], clean_env: dict[str, str],
        processes: list[subprocess.Popen[bytes]], tmp_path: Path,
        read_reports: Callable[..., list[Report]], wait: Callable[..., Any]) -> None:
    # A long backoff: once Redis is back only the flush at exit can deliver.
    env = dict(clean_env, MTBBS_AGENT_BACKOFF_INITIAL="60")
    agent = start(processes, agent_cmd(f"redis://127.0.0.1:{dead_port}/0"), env)
    spool = tmp_path / "spool.db"
    wait(lambda: spooled(spool) >= 3)
    server = redis_server_factory(port=dead_port)
    agent.send_signal(signal.SIGTERM)
    _out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    status = inspect(spool, 10_000)
    assert status.pending == 0
    reports = read_reports(server.client())
    assert [r.seq for r in reports] == list(range(1, status.last_seq + 1))
    assert b"Delivered" in err and b"before stopping" in err


def test_sigkill_loses_nothing_that_was_spooled(
        redis_server_factory: Callable[..., Any], dead_port: int,
        agent_cmd: Callable[..., list[str]], clean_env: dict[str, str],
        processes: list[subprocess.Popen[bytes]], tmp_path: Path,
        read_reports: Callable[..., list[Report]], wait: Callable[..., Any]) -> None:
    spool = tmp_path / "spool.db"
    env = dict(clean_env, MTBBS_AGENT_BACKOFF_INITIAL="0.1", MTBBS_AGENT_BACKOFF_MAX="0.5")
    first = start(processes, agent_cmd(f"redis://127.0.0.1:{dead_port}/0"), env)
    wait(lambda: spooled(spool) >= 5)
    first.kill()
    first.wait(10)
    killed = inspect(spool, 10_000)
    assert killed.pending == killed.last_seq >= 5

    server = redis_server_factory(port=dead_port)
    second = start(processes, agent_cmd(server.url), env)
    wait(lambda: len(read_reports(server.client())) >= killed.last_seq + 2)
    second.send_signal(signal.SIGTERM)
    _out, err = second.communicate(timeout=30)
    assert second.returncode == 0, err

    reports = read_reports(server.client())
    last = inspect(spool, 10_000).last_seq
    assert [r.seq for r in reports] == list(range(1, last + 1))
    assert {r.epoch for r in reports} == {killed.epoch}


def test_spool_command_shows_what_waits(
        dead_port: int, agent_cmd: Callable[..., list[str]], clean_env: dict[str, str],
        command: Callable[[str], str], tmp_path: Path) -> None:
    once = subprocess.run(agent_cmd(f"redis://127.0.0.1:{dead_port}/0", "--once"),
                          env=clean_env, capture_output=True, text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    assert "Redis unreachable" in once.stderr
    assert "1 reports stay in the spool for the next run" in once.stderr
    spool = str(tmp_path / "spool.db")
    shown = subprocess.run([command("mtbbs-agent"), "spool", "--spool", spool, "--json"],
                           env=clean_env, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["pending"], doc["last_seq"], doc["dropped_total"]) == (1, 1, 0)
    text = subprocess.run([command("mtbbs-agent"), "spool", "--spool", spool],
                          env=clean_env, capture_output=True, text=True, timeout=30)
    assert "Waiting:        1 of at most 10000" in text.stdout


def test_bad_input_exits_3_with_one_line(
        command: Callable[[str], str], clean_env: dict[str, str], tmp_path: Path) -> None:
    usage = subprocess.run([command("mtbbs-agent"), "run", "--interval", "soon"],
                           env=clean_env, capture_output=True, text=True, timeout=30)
    assert usage.returncode == 3
    env = dict(clean_env, MTBBS_AGENT_INTERVAL="0")
    bad = subprocess.run([command("mtbbs-agent"), "run", "--once", "--spool",
                          str(tmp_path / "s.db")], env=env, capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 3
    assert "agent.interval" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([command("mtbbs-agent"), "spool", "--spool",
                              str(tmp_path / "none.db")], env=clean_env, capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 3
    assert "does not exist" in missing.stderr


def test_systemd_hears_ready_watchdog_and_stopping(
        redis_url: str, agent_cmd: Callable[..., list[str]], clean_env: dict[str, str],
        tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(10)
        done = subprocess.run(agent_cmd(redis_url, "--once"),
                              env=dict(clean_env, NOTIFY_SOCKET=str(path)),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        messages = [listener.recv(256).decode() for _ in range(3)]
    assert messages == ["READY=1", "WATCHDOG=1", "STOPPING=1"]
