"""The telnet probe against real sockets: up, down, silent, slow, hanging up, and how
it leaves."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.checks.telnet import TelnetResult, probe_telnet
from wire.messages import Report, decode, encode


def test_a_bbs_that_answers_is_healthy(banner_server: Callable[..., Any]) -> None:
    server = banner_server()
    result = probe_telnet("127.0.0.1", server.port, timeout=5, threshold_ms=5000)
    assert result.healthy, result
    assert result.error is None
    assert result.connect_ms is not None and result.banner_ms is not None
    assert 0 <= result.connect_ms <= result.banner_ms
    assert (result.host, result.port, result.threshold_ms) == ("127.0.0.1", server.port, 5000)


def test_a_bbs_that_is_down_is_unhealthy(dead_port: int) -> None:
    result = probe_telnet("127.0.0.1", dead_port, timeout=2, threshold_ms=1000)
    assert not result.healthy
    assert result.error == "connection refused"
    assert result.connect_ms is None and result.banner_ms is None


def test_a_bbs_that_never_greets_is_unhealthy(banner_server: Callable[..., Any]) -> None:
    server = banner_server(banner=None)
    result = probe_telnet("127.0.0.1", server.port, timeout=0.3, threshold_ms=1000)
    assert not result.healthy
    assert result.connect_ms is not None
    assert result.banner_ms is None
    assert result.error is not None and "no banner" in result.error


def test_a_slow_banner_is_unhealthy(banner_server: Callable[..., Any]) -> None:
    server = banner_server(delay=0.4)
    result = probe_telnet("127.0.0.1", server.port, timeout=5, threshold_ms=100)
    assert not result.healthy
    assert result.banner_ms is not None and result.banner_ms >= 100
    assert result.error is not None and "threshold 100 ms" in result.error


def test_the_same_slow_banner_within_a_generous_threshold_is_healthy(
        banner_server: Callable[..., Any]) -> None:
    server = banner_server(delay=0.2)
    result = probe_telnet("127.0.0.1", server.port, timeout=5, threshold_ms=10_000)
    assert result.healthy
    assert result.banner_ms is not None and result.banner_ms >= 150


def test_a_bbs_that_hangs_up_at_once_is_unhealthy(banner_server: Callable[..., Any]) -> None:
    server = banner_server(close_at_once=True)
    result = probe_telnet("127.0.0.1", server.port, timeout=2, threshold_ms=1000)
    assert not result.healthy
    assert result.error is not None
    assert "closed" in result.error or "lost" in result.error


def test_times_come_from_the_given_clock(banner_server: Callable[..., Any]) -> None:
    server = banner_server()
    ticks = iter([10.0, 10.25, 10.5, 13.0])
    result = probe_telnet("127.0.0.1", server.port, timeout=5, threshold_ms=2000,
                          clock=lambda: next(ticks))
    assert result.connect_ms == 250.0
    assert result.banner_ms == 3000.0
    assert not result.healthy


def test_fields_travel_in_a_report() -> None:
    fields = TelnetResult(False, "127.0.0.1", 2323, 2000.0, 0.4, None, "no banner").as_fields()
    report = Report(host="h1", agent_version="1", epoch=1, seq=1, observed_at=1.8e9,
                    checks={"telnet": fields})
    decoded = decode(encode(report))
    assert isinstance(decoded, Report)
    assert decoded.checks["telnet"] == fields


def test_the_probe_sends_its_quit_text_and_hangs_up_itself(
        banner_server: Callable[..., Any]) -> None:
    server = banner_server()
    result = probe_telnet("127.0.0.1", server.port, timeout=5, threshold_ms=5000)
    assert result.healthy, result
    # The server's read saw end of input, after the default quit text as CR LF lines.
    assert server.received == b" \r\n \r\n \r\n"


def test_a_quit_text_from_the_environment_writes_line_ends_as_backslash_n(
        banner_server: Callable[..., Any]) -> None:
    server = banner_server()
    probe_telnet("127.0.0.1", server.port, timeout=5, threshold_ms=5000, quit_text="Q\\n")
    assert server.received == b"Q\r\n"


def test_an_empty_quit_text_just_ends_the_input(banner_server: Callable[..., Any]) -> None:
    server = banner_server()
    assert probe_telnet("127.0.0.1", server.port, timeout=5, threshold_ms=5000,
                        quit_text="").healthy
    assert server.received == b""
    assert server.accepted == 1


def test_a_bbs_that_never_hangs_up_holds_the_probe_at_most_the_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        def serve() -> None:
            conn, _ = listener.accept()
            conn.sendall(b"login: ")
            held.append(conn)  # never read, never closed until the test ends

        held: list[socket.socket] = []
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        started = time.monotonic()
        result = probe_telnet("127.0.0.1", port, timeout=0.5, threshold_ms=5000)
        elapsed = time.monotonic() - started
        thread.join(5)
        assert result.healthy, result
        assert elapsed < 2.0
    finally:
        for conn in held:
            conn.close()
        listener.close()
