"""The telnet probe: the one check that sees the BBS the way a caller does.

It connects to the BBS's telnet port and times the first bytes of the
banner (telnet option negotiation counts: it is the server answering). A
refused or timed-out connection, a server that closes or stays silent, or a
banner slower than the threshold is unhealthy. A BBS that does not answer
(refused, timed out, closed, silent) is rated ``critical``; one that
answers slowly ``warning`` (``wire.state.check_severity``). The result goes
into the report as the ``telnet`` check.

A function of its inputs (address, limits, clock), so tests point it at a
tiny server of their own.
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


def probe_telnet(host: str, port: int, *, timeout: float, threshold_ms: float,
                 clock: Callable[[], float] = time.perf_counter) -> TelnetResult:
    """Connect to ``host:port`` and time the banner; never raises for network trouble."""

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
    finally:
        sock.close()
    if banner_ms > threshold_ms:
        return TelnetResult(False, host, port, threshold_ms, connect_ms, banner_ms,
                            f"banner after {banner_ms:g} ms, threshold {threshold_ms:g} ms")
    return TelnetResult(True, host, port, threshold_ms, connect_ms, banner_ms, None)
