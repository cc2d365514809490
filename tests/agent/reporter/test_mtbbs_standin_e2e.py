"""MTBBS as docs/reporter.md wires it, watched by a default agent, seen through
the collector.

A stand-in shaped like MTBBS's ``TelnetServer`` (``mtbbs_standin.py``, with
exactly the lines docs/reporter.md adds) runs as a process configured only
by ``$MTBBS_CONFIG``; the agent runs with that file and no way to find the
BBS process but its defaults; a collector applies both streams. Callers log
in, crowd in from one address and leave; the probe must leave no ERROR in
the BBS's log; then the BBS is killed.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

HOST = "mtbbs-01"
STANDIN = Path(__file__).with_name("mtbbs_standin.py")
DOCS = Path(__file__).resolve().parents[3] / "docs" / "reporter.md"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; last seen: {last!r}")


class Caller:
    """A telnet caller with bounded waits."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def expect(self, text: str) -> None:
        wanted = text.encode()
        deadline = time.monotonic() + 10
        while wanted not in self.buffer:
            assert time.monotonic() < deadline, f"never got {text!r}: {self.buffer[-200:]!r}"
            data = self.sock.recv(4096)
            assert data, f"closed before {text!r}"
            self.buffer += data
        self.buffer = self.buffer.partition(wanted)[2]

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def log_in(self, user: str, password: str) -> Caller:
        self.expect("User: ")
        self.send(user)
        self.expect("Password: ")
        self.send(password)
        self.expect(f"Hello, {user}.")
        return self

    def give_up(self) -> None:
        """Leave at the login prompt politely: three empty answers, then the BBS closes."""
        self.sock.sendall(b" \r\n" * 3)
        self.sock.shutdown(socket.SHUT_WR)
        while self.sock.recv(4096):
            pass
        self.sock.close()

    def leave(self) -> None:
        self.expect("Command (Q to leave): ")
        self.send("Q")
        self.expect("Goodbye.")
        self.sock.close()


class Rig:
    """Redis (the suite's), a collector, the stand-in BBS and an agent."""

    def __init__(self, tmp_path: Path, redis_url: str, command: Any,
                 env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.command = command
        self.port = free_port()
        config = tmp_path / "monitor.toml"
        data = tmp_path / "data"
        data.mkdir()
        config.write_text(
            f'[redis]\nurl = "{redis_url}"\n\n'
            f'[checks]\nhost = "{HOST}"\ndb = "{data / "mtbbs.db"}"\ndata_dir = "{data}"\n\n'
            f'[probe]\nport = {self.port}\n\n'
            f'[agent]\nspool_path = "{tmp_path / "spool.db"}"\n',
            encoding="utf-8")
        # The only configuration either side gets: the file, named as documented.
        self.env = {**env, "MTBBS_CONFIG": str(config)}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.bbs_log = tmp_path / "bbs.log"

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(args, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, cwd=self.tmp_path)
        self.processes.append(process)
        return process

    def start_all(self) -> None:
        self.start([self.command("mtbbs-collector"), "run"], self.tmp_path / "collector.log")
        self.bbs = self.start([sys.executable, str(STANDIN), "--port", str(self.port)],
                              self.bbs_log)
        wait_for(self.listening, "the stand-in BBS to listen")
        self.agent = self.start([self.command("mtbbs-agent"), "run", "--interval", "0.3"],
                                self.tmp_path / "agent.log")

    def listening(self) -> bool:
        # From its log: a test connection would be a caller of its own.
        return "listening on" in self.bbs_log.read_text()

    def collector(self, *args: str) -> Any:
        out = subprocess.run([self.command("mtbbs-collector"), *args, "--json"],
                             env=self.env, capture_output=True, text=True, timeout=30)
        try:
            return json.loads(out.stdout)
        except json.JSONDecodeError:
            return None

    def host(self) -> dict[str, Any] | None:
        document = self.collector("status", "--host", HOST)
        hosts = (document or {}).get("hosts") or []
        return hosts[0] if hosts else None

    def check(self, name: str) -> dict[str, Any]:
        host = self.host()
        return dict(((host or {}).get("checks") or {}).get(name) or {})

    def sessions(self) -> list[dict[str, Any]]:
        return list(self.collector("sessions", "--host", HOST) or [])

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


@pytest.fixture
def rig(tmp_path: Path, redis_url: str, command: Any,
        clean_env: dict[str, str]) -> Iterator[Rig]:
    made = Rig(tmp_path, redis_url, command, clean_env)
    try:
        made.start_all()
        yield made
    finally:
        made.stop()


def documented_lines() -> list[str]:
    """The code lines of the MTBBS example in docs/reporter.md (comments left out)."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("### Adding it to MTBBS", 1)[1].split("\n### ", 1)[0]
    lines = []
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        for line in block.splitlines():
            code = line.split("  #", 1)[0].strip()
            if code and not code.startswith("#"):
                lines.append(code)
    return lines


def test_the_stand_in_carries_exactly_the_documented_lines() -> None:
    lines = documented_lines()
    assert len(lines) >= 6, lines
    source = {line.strip() for line in STANDIN.read_text(encoding="utf-8").splitlines()}
    assert [line for line in lines if line not in source] == []


def test_mtbbs_with_the_reporter_seen_through_the_collector(rig: Rig) -> None:
    # The agent found the BBS by itself: the process listening on the telnet port.
    memory = wait_for(lambda: (m := rig.check("memory")).get("pid") and m, "the memory check")
    assert memory["pid"] == rig.bbs.pid and memory["found_by"] == "port", memory
    assert wait_for(lambda: rig.check("telnet").get("healthy"), "a healthy probe")

    guest = Caller(rig.port).log_in("guest", "anything")
    taro = Caller(rig.port).log_in("taro", "taro-pass")
    logged_in = wait_for(
        lambda: sorted(s.get("user_id") for s in rig.sessions()
                       if s.get("state") == "logged_in") == ["guest", "taro"] and rig.sessions(),
        "two logins in the collector's sessions")
    assert all(s["client_id"].startswith("127.0.0.1:") for s in logged_in)

    # Two more callers from the same address: four from one IP, more than MTBBS's 3.
    waiting = [Caller(rig.port), Caller(rig.port)]
    for caller in waiting:
        caller.expect("User: ")
    sessions = wait_for(lambda: (c := rig.check("sessions")).get("status") == "WARNING" and c,
                        "the per-IP warning")
    assert sessions["healthy"] is False

    guest.leave()
    taro.leave()
    for caller in waiting:
        caller.give_up()
    wait_for(lambda: not [s for s in rig.sessions() if s.get("state") == "logged_in"],
             "the logins to end")

    # The agent has probed every 0.3 s all along: each probe left politely.
    probes = wait_for(lambda: rig.bbs_log.read_text().count("gave up logging in"),
                      "probes in the BBS's log")
    assert probes >= len(waiting) + 3
    bbs_log = rig.bbs_log.read_text()
    assert " ERROR " not in bbs_log, bbs_log[-3000:]
    assert "Traceback" not in bbs_log

    rig.bbs.kill()
    rig.bbs.wait(10)
    telnet = wait_for(lambda: (t := rig.check("telnet")).get("healthy") is False and t,
                      "the probe to see the killed BBS")
    assert telnet["error"] == "connection refused"
    memory = wait_for(lambda: (m := rig.check("memory")).get("pid") != rig.bbs.pid and m,
                      "the memory check to lose the killed BBS")
    # Nothing listens on the port any more; the match behind it finds no BBS
    # (unless this machine runs a real MTBBS, which it then rightly reports).
    assert memory.get("found_by") != "port"
    if memory.get("pid") is None:
        assert memory["healthy"] is False
        assert f"nothing listens on port {rig.port}" in memory["error"]
    host = rig.host()
    assert host is not None and host["status"] != "OK"
