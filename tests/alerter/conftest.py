"""Fixtures of the alerter tests: real SMTP and HTTP stand-ins, host state, workers.

* ``smtp`` — an aiosmtpd server on a free loopback port that records every
  message (and can be told to answer with an error, or be started later).
* ``sink`` — a threaded HTTP server standing in for Slack and webhooks: it
  records every request and answers from a programmable list (status,
  headers, body, a stall until released).
* ``hosts`` — writes host state exactly as the collector does
  (``wire.state.report_fields`` + HSET) and enqueues evaluations the way the
  collector does (pending mark with SET NX EX, then the job by import path).
* ``alerter_config`` — writes a TOML configuration for a test.
* ``workers`` — starts ``mtbbs-alerter worker`` processes and kills them
  (the whole process group, so a work-horse child goes too).
* ``wait_for`` — a bounded wait; every wait of these tests goes through it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue

from wire.keys import EVALUATE_JOB, RQ_SERIALIZER, KeySpace
from wire.messages import Report
from wire.state import report_fields

Waiter = Callable[..., Any]


def _wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
              message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def wait_for() -> Waiter:
    """``wait_for(predicate, timeout=10, message=...)``: poll until truthy, else fail."""
    return _wait_for


# -- SMTP -------------------------------------------------------------------------------


class _SmtpRecorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.reply: str | None = None  # e.g. "451 4.3.0 try later"
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply:
            return self.reply
        with self.lock:
            self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                  "data": bytes(envelope.original_content or envelope.content)})
        return "250 OK"


@dataclass
class SmtpServer:
    """A real SMTP server of the test (aiosmtpd)."""

    port: int
    recorder: _SmtpRecorder = field(default_factory=_SmtpRecorder)
    controller: Any = None
    options: dict[str, Any] = field(default_factory=dict)

    def start(self, **options: Any) -> None:
        from aiosmtpd.controller import Controller

        self.options = options or self.options
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port,
                                     **self.options)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self.recorder.lock:
            return list(self.recorder.messages)

    def parsed(self) -> list[EmailMessage]:
        return [message_from_bytes(m["data"], policy=policy.default)  # type: ignore[misc]
                for m in self.messages]


@pytest.fixture
def smtp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp(smtp_port: int) -> Iterator[SmtpServer]:
    """A running SMTP server (``smtp.stop()`` / ``smtp.start()`` to take it down and up)."""
    server = SmtpServer(port=smtp_port)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp_down(smtp_port: int) -> Iterator[SmtpServer]:
    """An SMTP server that is not running yet (``start()`` it later)."""
    server = SmtpServer(port=smtp_port)
    yield server
    server.stop()


# -- HTTP -------------------------------------------------------------------------------


@dataclass
class Reply:
    """How the sink answers one request."""

    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    stall: threading.Event | None = None  # wait for this before answering


@dataclass
class HttpSink:
    """A local HTTP server standing in for Slack (and webhooks)."""

    server: ThreadingHTTPServer
    requests: list[dict[str, Any]] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)  # consumed in order, then `default`
    default: Reply = field(default_factory=Reply)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrivals: list[float] = field(default_factory=list)  # noted before any stall

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/secret-token"

    def ok_requests(self) -> list[dict[str, Any]]:
        """Requests answered 200 (a stalled one's answer may have found nobody)."""
        with self.lock:
            return [r for r in self.requests if r["status"] == 200 and not r["stalled"]]

    def all_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)

    def attachments(self) -> list[dict[str, Any]]:
        return [a for r in self.ok_requests() for a in r["json"].get("attachments", [])]


def _make_handler(sink: HttpSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrived = time.time()
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with sink.lock:
                reply = sink.replies.pop(0) if sink.replies else sink.default
                sink.arrivals.append(arrived)
            if reply.stall is not None:
                reply.stall.wait(30)
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            with sink.lock:
                sink.requests.append({"path": self.path, "headers": dict(self.headers),
                                      "body": body, "json": parsed, "status": reply.status,
                                      "arrived": arrived, "stalled": reply.stall is not None})
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                data = reply.body.encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    """A recording HTTP server on a free loopback port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    holder = HttpSink(server=server)
    server.RequestHandlerClass = _make_handler(holder)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield holder
    for reply in holder.replies:
        if reply.stall is not None:
            reply.stall.set()
    server.shutdown()
    server.server_close()


# -- host state, as the collector writes it -------------------------------------------------


def healthy_checks() -> dict[str, dict[str, Any]]:
    return {
        "database": {"healthy": True, "integrity": "ok", "size_mb": 5.23, "table_count": 8},
        "sessions": {"healthy": True, "active_sessions": 3, "max_sessions": 100},
        "disk_space": {"healthy": True, "percent_used": 50.1, "total_gb": 500.0},
        "memory": {"healthy": True, "process_rss_mb": 45.2, "system_percent": 65.3},
    }


@dataclass
class Hosts:
    """Write host state like the collector; enqueue evaluations like the collector."""

    client: redis.Redis
    keys: KeySpace
    seq: int = 0

    def write(self, host: str, *, disk: float | None = None, database: bool | None = None,
              stale: str = "no", extra: dict[str, dict[str, Any]] | None = None,
              checks: dict[str, dict[str, Any]] | None = None) -> int:
        """Write the host hash; returns its ``last_seen_ms`` (Redis time)."""
        self.seq += 1
        body = checks if checks is not None else healthy_checks()
        if disk is not None:
            body["disk_space"] = dict(body["disk_space"], percent_used=disk, healthy=disk < 90)
        if database is not None:
            body["database"] = dict(body["database"], healthy=database,
                                    integrity="ok" if database else "corrupt")
        for name, fields in (extra or {}).items():
            body[name] = dict(body.get(name, {}), **fields)
        seconds, micros = self.client.time()
        now_ms = seconds * 1000 + micros // 1000
        report = Report(host=host, agent_version="test", epoch=1, seq=self.seq,
                        observed_at=now_ms / 1000, checks=body, interval=1.0)
        fields = report_fields(report, now_ms, stale)
        key = self.keys.host(host)
        with self.client.pipeline() as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.execute()
        return int(now_ms)

    def enqueue(self, host: str) -> bool:
        if not self.client.set(self.keys.evaluation_pending(host), 1, nx=True, ex=60):
            return False
        Queue(self.keys.evaluate_queue(), connection=self.client,
              serializer=RQ_SERIALIZER).enqueue(EVALUATE_JOB, host)
        return True

    def report(self, host: str, **kwargs: Any) -> int:
        """Write and enqueue like the collector; returns the report's ``last_seen_ms``."""
        seen = self.write(host, **kwargs)
        self.enqueue(host)
        return seen

    def judged(self, host: str, check: str, seen: int, stale: str = "no") -> bool:
        """True once the alert of (host, check) has taken the report ``seen`` in."""
        mark = self.client.hget(self.keys.alert(host, check), "mark")
        return mark == f"{seen}:{stale}".encode()


@pytest.fixture
def keys() -> KeySpace:
    return KeySpace("mtbbs:")


@pytest.fixture
def hosts(redis_client: redis.Redis, keys: KeySpace) -> Hosts:
    return Hosts(client=redis_client, keys=keys)


# -- configuration ---------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def to_toml(document: dict[str, Any]) -> str:
    """A small TOML writer for test configurations (tables, arrays of tables, scalars)."""
    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict | list) or
                   (isinstance(v, list) and not (v and isinstance(v[0], dict)))}
        if scalars or not prefix:
            if prefix:
                lines.append(f"[{prefix}]")
            for key, value in scalars.items():
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        for key, value in body.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                table(name, value)
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                for item in value:
                    lines.append(f"[[{name}]]")
                    for k, v in item.items():
                        lines.append(f"{k} = {_toml_value(v)}")
                    lines.append("")

    table("", document)
    return "\n".join(lines) + "\n"


@pytest.fixture
def alerter_config(tmp_path: Path, redis_url: str) -> Callable[..., Path]:
    """``alerter_config(doc)`` writes ``doc`` (merged over fast test defaults) as TOML."""

    def write(document: dict[str, Any] | None = None, name: str = "mtbbs.toml") -> Path:
        base: dict[str, Any] = {
            "redis": {"url": redis_url},
            "alerter": {"maintenance_interval": 1.0, "abandoned_grace": 1.0,
                        "digest_window": 0.0, "retry_intervals": ["1"], "retry_max": 3,
                        "tick_interval": 1.0},
        }
        for section, values in (document or {}).items():
            if isinstance(values, dict) and isinstance(base.get(section), dict):
                base[section] = {**base[section], **values}
            else:
                base[section] = values
        path = tmp_path / name
        path.write_text(to_toml(base), encoding="utf-8")
        return path

    return write


# -- worker processes ----------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the worker and everything it started (a work-horse)."""
        try:
            import psutil

            children = psutil.Process(self.process.pid).children(recursive=True)
        except Exception:
            children = []
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for child in children:
            try:
                child.kill()
            except Exception:
                pass
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def workers(tmp_path: Path, command: Callable[[str], str],
            clean_env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    """``workers(config_path, *extra_args)`` starts an ``mtbbs-alerter worker`` process."""
    started: list[WorkerProcess] = []

    def start(config: Path, *extra: str, env: dict[str, str] | None = None) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        handle = open(log, "wb")  # noqa: SIM115 - the process owns it until the end
        process = subprocess.Popen(
            [command("mtbbs-alerter"), "worker", "--config", str(config), *extra],
            stdout=handle, stderr=subprocess.STDOUT, env={**clean_env, **(env or {})},
            start_new_session=True)
        handle.close()
        worker = WorkerProcess(process=process, log=log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.kill()


@pytest.fixture
def make_context(redis_url: str) -> Iterator[Callable[..., Any]]:
    """``make_context(doc)``: an AlerterContext (installed for jobs) on the test's Redis."""
    from alerter.context import build_context, set_context
    from wire.config import RedisSettings

    def make(document: dict[str, Any] | None = None) -> Any:
        doc: dict[str, Any] = {"alerter": {"digest_window": 0.0, "retry_intervals": ["1"]}}
        for section, values in (document or {}).items():
            doc[section] = {**doc.get(section, {}), **values} if isinstance(values, dict) \
                else values
        ctx = build_context(doc, RedisSettings(url=redis_url), env={})
        set_context(ctx)
        return ctx

    yield make
    set_context(None)


def quiet(client: redis.Redis, keys: KeySpace) -> bool:
    """Nothing queued, running, scheduled or buffered: the alerter has caught up."""
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    for name in (keys.evaluate_queue(), keys.notify_queue()):
        if client.llen(f"rq:queue:{name}"):
            return False
        # ZCARD, not .count: counting would run rq's cleanup from the test.
        if client.zcard(StartedJobRegistry(name, connection=client).key):
            return False
        if client.zcard(ScheduledJobRegistry(name, connection=client).key):
            return False
    return not any(client.llen(keys.digest_buffer(c)) for c in ("mail", "slack", "webhook"))


@pytest.fixture
def settled(redis_client: redis.Redis, keys: KeySpace) -> Callable[..., None]:
    """``settled(timeout)``: wait until the alerter has nothing left to do."""

    def wait(timeout: float = 15.0) -> None:
        _wait_for(lambda: quiet(redis_client, keys), timeout, message="the alerter to settle")

    return wait
