"""Fixtures of the agent daemon tests: tiny telnet servers, a BBS database,
agents wired to a real redis-server, and readers of the host's reports stream."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.checks import CheckSettings, run_checks
from agent.daemon import Daemon
from agent.publisher import Backoff, Publisher
from agent.settings import AgentSettings, ProbeSettings
from agent.spool import Spool
from wire.config import RedisSettings, connect
from wire.keys import KeySpace
from wire.messages import Report, decode_entry

HOST = "bbs-test"


def unused_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BannerServer:
    """A TCP server that greets each caller after ``delay`` seconds (or never)."""

    def __init__(self, *, delay: float = 0.0, banner: bytes | None = b"\xff\xfb\x01Welcome\r\n",
                 close_at_once: bool = False) -> None:
        self.delay = delay
        self.banner = banner
        self.close_at_once = close_at_once
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._greet, args=(conn,), daemon=True).start()

    def _greet(self, conn: socket.socket) -> None:
        with conn:
            if self.close_at_once:
                return
            if self._stop.wait(self.delay) or self.banner is None:
                self._stop.wait(10)  # a silent server: hold the line until the test ends
                return
            try:
                conn.sendall(self.banner)
                # Like a BBS: read what the caller says until it hangs up.
                conn.settimeout(0.1)
                while not self._stop.is_set():
                    try:
                        data = conn.recv(1024)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    self.received += data
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)


@pytest.fixture
def banner_server() -> Iterator[Callable[..., BannerServer]]:
    """``banner_server(delay=0.5)`` starts a telnet-like server; all stop after the test."""
    servers: list[BannerServer] = []

    def make(**options: Any) -> BannerServer:
        server = BannerServer(**options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def bbs_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for the BBS, so that the memory check finds one."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield process
    process.kill()
    process.wait(10)


@pytest.fixture
def bbs_db(tmp_path: Path) -> Path:
    """A small, healthy BBS database in ``tmp_path/data``."""
    path = tmp_path / "data" / "mtbbs.db"
    path.parent.mkdir()
    connection = sqlite3.connect(path)
    connection.executescript(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, user_id TEXT);"
        "CREATE TABLE boards (id INTEGER PRIMARY KEY, name TEXT);"
        "INSERT INTO users (user_id) VALUES ('sysop');"
    )
    connection.commit()
    connection.close()
    return path


@pytest.fixture
def check_settings(bbs_db: Path) -> CheckSettings:
    """[checks] for the test database, BBS process looked up by a name nothing has."""
    return CheckSettings(host=HOST, db=bbs_db, data_dir=bbs_db.parent,
                         bbs_match="no-such-bbs-program")


class Agent:
    """A daemon of the tests with its parts, recording what the checks produced."""

    def __init__(self, url: str, spool_path: Path, check_settings: CheckSettings,
                 settings: AgentSettings, probe: ProbeSettings, keys: KeySpace,
                 host_key: bytes | None = None) -> None:
        self.keys = keys
        self.client = connect(RedisSettings(url=url, socket_timeout=1.0))
        self.spool = Spool(spool_path, max_reports=settings.spool_max_reports,
                           synchronous=settings.spool_sync)
        self.produced: list[dict[str, Any]] = []
        self.integrity_flags: list[bool] = []
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_max,
                               settings.backoff_jitter)
        self.publisher = Publisher(self.client, keys, self.spool, host=check_settings.host,
                                   maxlen=settings.stream_maxlen, batch=settings.replay_batch,
                                   host_key=host_key, backoff=self.backoff)

        def checks(integrity: bool, previous: str | None) -> dict[str, Any]:
            result = run_checks(check_settings, redis_client=self.client, keys=keys,
                                run_integrity=integrity, previous_integrity=previous)
            self.integrity_flags.append(integrity)
            self.produced.append(result)
            return result

        self.daemon = Daemon(settings, probe, host=check_settings.host, spool=self.spool,
                             publisher=self.publisher, run_checks=checks)

    def close(self) -> None:
        self.spool.close()
        self.client.close()


@pytest.fixture
def make_agent(tmp_path: Path, check_settings: CheckSettings) -> Iterator[Callable[..., Agent]]:
    """``make_agent(url, interval=0.2, ...)``: an in-process agent; closed after the test."""
    agents: list[Agent] = []

    def make(url: str, *, probe: ProbeSettings | None = None, host_key: bytes | None = None,
             spool_path: Path | None = None, **agent_options: Any) -> Agent:
        agent_options.setdefault("interval", 0.2)
        agent_options.setdefault("backoff_initial", 0.1)
        agent_options.setdefault("backoff_max", 0.4)
        settings = AgentSettings(spool_path=spool_path or tmp_path / "spool.db", **agent_options)
        made = Agent(url, settings.spool_path, check_settings, settings,
                     probe or ProbeSettings(enabled=False), KeySpace(), host_key)
        agents.append(made)
        return made

    yield make
    for made in agents:
        made.close()


def stream_reports(client: redis.Redis, keys: KeySpace | None = None,
                   host: str = HOST) -> list[Report]:
    """Every report on ``host``'s reports stream, oldest first."""
    keys = keys or KeySpace()
    reports = []
    for _entry_id, fields in client.xrange(keys.reports_stream(host)):
        message = decode_entry(fields)
        assert isinstance(message, Report)
        reports.append(message)
    return reports


@pytest.fixture
def read_reports() -> Callable[..., list[Report]]:
    """``read_reports(client)``: the reports on the stream, oldest first."""
    return stream_reports


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def wait() -> Callable[..., Any]:
    """``wait(predicate, timeout=20)``: poll until true, bounded."""
    return wait_for


@pytest.fixture
def dead_port() -> int:
    """A loopback port with nothing listening (a BBS or Redis that is down)."""
    return unused_port()
