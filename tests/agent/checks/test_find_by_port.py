"""Finding the BBS as MTBBS really runs: the listener on its telnet port, else a
match on ``uvicorn app.main:app`` (a program and one of its arguments)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from agent.checks import CheckSettings, check_memory, find_bbs_process
from agent.checks.memory import ProcessNotFound
from agent.daemon import HostChecks
from wire.keys import KeySpace

LISTENER = """
import socket, sys, time
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
time.sleep(120)
"""


class Listening:
    """A process started like MTBBS (``<program> <app>``) that listens on a port."""

    def __init__(self, directory: Path) -> None:
        token = f"{os.getpid()}_{time.monotonic_ns()}"
        # Unique names: other uvicorn servers on the test machine never match.
        self.program = f"uvicorn_{token}"
        self.app = f"app_{token}.main:app"
        script = directory / self.program
        script.write_text(LISTENER)
        self.process = subprocess.Popen([sys.executable, str(script), self.app],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())  # printed once listening

    @property
    def match(self) -> str:
        return f"{self.program} {self.app}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Listening]:
    bbs = Listening(tmp_path)
    yield bbs
    bbs.stop()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_listener_on_the_port_is_the_bbs(listening: Listening) -> None:
    found = find_bbs_process(port=listening.port)
    assert (found.process.pid, found.found_by) == (listening.process.pid, "port")
    result = check_memory(port=listening.port, match="no-such-program")
    assert result.pid == listening.process.pid and result.found_by == "port"


def test_a_pidfile_still_wins_over_the_port(listening: Listening, tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pidfile = tmp_path / "bbs.pid"
        pidfile.write_text(f"{other.pid}\n")
        found = find_bbs_process(pidfile=pidfile, port=listening.port)
        assert (found.process.pid, found.found_by) == (other.pid, "pidfile")
    finally:
        other.kill()
        other.wait(10)


def test_nothing_on_the_port_falls_back_to_the_match(listening: Listening) -> None:
    found = find_bbs_process(port=unused_port(), match=listening.match)
    assert (found.process.pid, found.found_by) == (listening.process.pid, "match")


def test_the_match_needs_every_argument_it_names(listening: Listening) -> None:
    assert find_bbs_process(match=listening.match).process.pid == listening.process.pid
    assert find_bbs_process(match=listening.program).process.pid == listening.process.pid
    with pytest.raises(ProcessNotFound):
        find_bbs_process(match=f"{listening.program} app.other:app")


def test_a_bbs_found_neither_way_says_both(listening: Listening) -> None:
    port = unused_port()
    result = check_memory(port=port, match=f"{listening.program} app.other:app")
    assert not result.healthy and result.pid is None
    assert result.error is not None
    assert f"nothing listens on port {port}" in result.error
    assert "app.other:app" in result.error


def test_a_listener_of_another_user_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    # What psutil reports without the privilege to read another user's sockets.
    hidden = SimpleNamespace(status=psutil.CONN_LISTEN, laddr=SimpleNamespace(port=2323),
                             pid=None)
    monkeypatch.setattr(psutil, "net_connections", lambda kind: [hidden])
    with pytest.raises(ProcessNotFound, match="not visible to this user"):
        find_bbs_process(port=2323)


def test_the_daemon_keeps_saying_how_it_found_the_bbs(listening: Listening,
                                                      tmp_path: Path) -> None:
    settings = CheckSettings(host="bbs-01", db=tmp_path / "none.db", data_dir=tmp_path,
                             bbs_port=listening.port, bbs_match="")
    checks = HostChecks(settings, redis_client=None, keys=KeySpace())
    memories: list[Any] = [checks(False, None)["memory"] for _ in range(2)]
    for memory in memories:
        assert memory["pid"] == listening.process.pid and memory["found_by"] == "port"
