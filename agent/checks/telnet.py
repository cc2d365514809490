"""The telnet probe: the one check that sees the BBS the way a caller does.

It connects to the BBS's telnet port and times the first bytes of the
banner (telnet option negotiation counts: it is the server answering). A
refused or timed-out connection, a server that closes or stays silent, or a
banner slower than the threshold is unhealthy. A BBS that does not answer
(refused, timed out, closed, silent) is rated ``critical``; one that
answers slowly ``warning`` (``wire.state.check_severity``). The result goes
into the report as the ``telnet`` check.

After the banner the probe leaves the way a polite caller does, so that
the BBS logs no error for it: it sends the *quit text* (by default three
empty lines, at which MTBBS's login prompt gives up and closes the
connection itself, and the demo BBS just asks again), closes its sending
side and reads whatever the BBS still says until the BBS closes. A caller
that vanished in the middle of a write or a read is what MTBBS logs as a
session error with a traceback; one that ends its input politely is not.

A function of its inputs (address, limits, quit text, clock), so tests point
it at a tiny server of their own.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from wire.state import SEVERITY_CRITICAL, SEVERITY_FIELD, SEVERITY_WARNING

CHECK_NAME = "telnet"
# Enough to see that the server speaks; the banner's content is not judged.
_READ_SIZE = 256
# Three lines holding a space: MTBBS's login prompt takes each as an empty
# answer and, after its three attempts, says goodbye and closes by itself.
# Written with the escape an environment variable would use, so the default
# reads the same in the configuration reference.
DEFAULT_QUIT_TEXT = " \\n \\n \\n"
# What the BBS still sends while the probe leaves is read and dropped, up to
# this much: a BBS that keeps talking is closed on rather than listened to.
_MAX_DRAIN_BYTES = 64 * 1024


@dataclass(frozen=True)
class TelnetResult:
    """What the probe saw; times in milliseconds from the start of the connect."""

    healthy: bool
    host: str
    port: int
    threshold_ms: float
    connect_ms: float | None = None
    banner_ms: float | None = None
    error: str | None = None

    @property
    def severity(self) -> str | None:
        """``critical`` when the BBS did not answer, ``warning`` when it was
        slow, None when healthy."""
        if self.healthy:
            return None
        return SEVERITY_WARNING if self.banner_ms is not None else SEVERITY_CRITICAL

    def as_fields(self) -> dict[str, bool | int | float | str | None]:
        """The fields of the report's ``telnet`` entry."""
        fields: dict[str, bool | int | float | str | None] = {
            "healthy": self.healthy,
            "host": self.host,
            "port": self.port,
            "connect_ms": self.connect_ms,
            "banner_ms": self.banner_ms,
            "threshold_ms": self.threshold_ms,
            "error": self.error,
        }
        if self.severity is not None:
            fields[SEVERITY_FIELD] = self.severity
        return fields


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def quit_bytes(text: str) -> bytes:
    """The quit text as sent: each line end (a newline, or the two characters
    backslash and n, which an environment variable can hold) becomes telnet's
    CR LF."""
    lines = text.replace("\\n", "\n").replace("\r\n", "\n").split("\n")
    return "\r\n".join(lines).encode("utf-8")


def _leave(sock: socket.socket, quit_text: str, timeout: float) -> None:
    """Send the quit text, end our side and read until the BBS closes.

    Reading to the end matters as much as the quit text: closing a socket
    with unread data makes the kernel reset the connection, and a BBS in the
    middle of a write then sees the connection lost.
    """
    deadline = time.monotonic() + timeout
    drained = 0
    try:
        if quit_text:
            sock.sendall(quit_bytes(quit_text))
        sock.shutdown(socket.SHUT_WR)
        while drained < _MAX_DRAIN_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            data = sock.recv(4096)
            if not data:
                return
            drained += len(data)
    except OSError:
        # Already closed or reset by the BBS: nothing left to be polite to.
        return


def probe_telnet(host: str, port: int, *, timeout: float, threshold_ms: float,
                 quit_text: str = DEFAULT_QUIT_TEXT,
                 clock: Callable[[], float] = time.perf_counter) -> TelnetResult:
    """Connect to ``host:port``, time the banner and leave politely.

    Never raises for network trouble. Leaving (``quit_text``, then reading
    until the BBS closes, for at most ``timeout`` seconds) is not judged.
    """

    def failed(error: str, connect_ms: float | None = None) -> TelnetResult:
        return TelnetResult(False, host, port, threshold_ms, connect_ms, None, error)

    started = clock()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return failed("connection refused")
    except TimeoutError:
        return failed(f"no connection within {timeout:g} s")
    except OSError as exc:
        return failed(f"cannot connect: {exc.strerror or type(exc).__name__}")
    connect_ms = _ms(clock() - started)
    try:
        remaining = timeout - (clock() - started)
        if remaining <= 0:
            return failed(f"no banner within {timeout:g} s", connect_ms)
        sock.settimeout(remaining)
        try:
            data = sock.recv(_READ_SIZE)
        except TimeoutError:
            return failed(f"no banner within {timeout:g} s", connect_ms)
        except OSError as exc:
            return failed(f"connection lost: {exc.strerror or type(exc).__name__}", connect_ms)
        if not data:
            return failed("connection closed before the banner", connect_ms)
        banner_ms = _ms(clock() - started)
        _leave(sock, quit_text, timeout)
    finally:
        sock.close()
    if banner_ms > threshold_ms:
        return TelnetResult(False, host, port, threshold_ms, connect_ms, banner_ms,
                            f"banner after {banner_ms:g} ms, threshold {threshold_ms:g} ms")
    return TelnetResult(True, host, port, threshold_ms, connect_ms, banner_ms, None)
