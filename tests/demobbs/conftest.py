"""Fixtures for the demo BBS tests: a running ``mtbbs-demo-bbs`` and telnet clients."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from wire.keys import KeySpace
from wire.messages import SessionEvent, decode_entry

# The host id the demo BBS reports its sessions under, unless a test names another.
HOST = "demo-01"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TelnetClient:
    """A plain-socket telnet client with bounded waits."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.received = b""

    @property
    def client_id(self) -> str:
        """How the BBS names this session: our own address, ``ip:port``."""
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def expect(self, text: str) -> str:
        """Read until ``text`` arrives; returns everything read up to it."""
        wanted = text.encode("utf-8")
        deadline = time.monotonic() + self.timeout
        while wanted not in self.received:
            if time.monotonic() > deadline:
                raise AssertionError(f"did not receive {text!r}; got {self.received[-300:]!r}")
            data = self.sock.recv(4096)
            if not data:
                raise AssertionError(f"connection closed before {text!r}; got "
                                     f"{self.received[-300:]!r}")
            self.received += data
        head, _, tail = self.received.partition(wanted)
        self.received = tail
        return (head + wanted).decode("utf-8")

    def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode("utf-8")
        self.sock.sendall(data + b"\r\n")

    def read_to_eof(self) -> str:
        """Everything until the server closes the connection."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            data = self.sock.recv(4096)
            if not data:
                break
            self.received += data
        text, self.received = self.received.decode("utf-8", "replace"), b""
        return text

    def close(self) -> None:
        self.sock.close()


@dataclass
class RunningBbs:
    process: subprocess.Popen[bytes]
    port: int
    db: Path
    pidfile: Path
    log: Path

    def client(self) -> TelnetClient:
        return TelnetClient(self.port)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(15)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def start_bbs(tmp_path: Path, command: Any, clean_env: dict[str, str]) -> Iterator[
        Callable[..., RunningBbs]]:
    """``start_bbs(redis_url, *args)``: run mtbbs-demo-bbs until its pidfile appears."""
    running: list[RunningBbs] = []

    def start(redis_url: str, *extra: str, host: str = HOST) -> RunningBbs:
        index = len(running)
        port = free_port()
        db = tmp_path / f"bbs{index}" / "mtbbs.db"
        pidfile = tmp_path / f"bbs{index}" / "bbs.pid"
        log = tmp_path / f"bbs{index}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [command("mtbbs-demo-bbs"), "--port", str(port), "--db", str(db),
                 "--pidfile", str(pidfile), "--host", host, "--redis-url", redis_url, *extra],
                stdout=out, stderr=subprocess.STDOUT, env=clean_env)
        bbs = RunningBbs(process, port, db, pidfile, log)
        running.append(bbs)
        deadline = time.monotonic() + 20
        while not pidfile.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"demo BBS did not start: {bbs.output()}")
            time.sleep(0.05)
        return bbs

    yield start
    for bbs in running:
        if bbs.process.poll() is None:
            bbs.process.kill()
            bbs.process.wait(10)


def session_events(client: redis.Redis, host: str = HOST) -> list[SessionEvent]:
    """The events on ``host``'s sessions stream, oldest first."""
    events = []
    for _entry_id, fields in client.xrange(KeySpace().sessions_stream(host)):
        message = decode_entry(fields)
        assert isinstance(message, SessionEvent)
        events.append(message)
    return events


@pytest.fixture
def events_of(redis_client: redis.Redis) -> Callable[..., list[SessionEvent]]:
    """``events_of(client_id, until=n)``: that session's events, waiting for ``n`` of them."""

    def fetch(client_id: str, until: int = 0, timeout: float = 10.0) -> list[SessionEvent]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in session_events(redis_client) if e.client_id == client_id]
            if len(found) >= until or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    return fetch


@pytest.fixture
def all_events(redis_client: redis.Redis) -> Callable[[], list[SessionEvent]]:
    return lambda: session_events(redis_client)

