"""How the agent rates its unhealthy results (the fleet's severity policy)."""

from __future__ import annotations

import socket
import sqlite3
import threading
from pathlib import Path

from agent.checks import check_database, check_memory
from agent.checks.telnet import probe_telnet
from wire.state import check_severity
from wire.status import Status


def test_a_bbs_that_refuses_the_connection_is_critical() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: refused
        fields = probe_telnet("127.0.0.1", port, timeout=2, threshold_ms=1000).as_fields()
    assert fields["severity"] == "critical"
    assert check_severity("telnet", fields) is Status.CRITICAL


def test_a_slow_banner_is_a_warning() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"Welcome to MTBBS\r\n")
                connection.recv(1)  # until the probe hangs up

        bbs = threading.Thread(target=answer, daemon=True)
        bbs.start()
        # The clock says the banner took 5 s, past the 1 s threshold.
        ticks = iter([0.0, 0.001, 0.001, 5.0])
        fields = probe_telnet("127.0.0.1", port, timeout=2, threshold_ms=1000,
                              clock=lambda: next(ticks, 5.0)).as_fields()
        bbs.join(timeout=5)
    assert fields["banner_ms"] == 5000.0 and fields["severity"] == "warning"
    assert check_severity("telnet", fields) is Status.WARNING


def test_a_missing_bbs_process_is_critical() -> None:
    fields = check_memory(match="no-such-bbs-program-anywhere").to_fields()
    assert fields["healthy"] is False and fields["severity"] == "critical"
    assert check_severity("memory", fields) is Status.CRITICAL


def test_a_locked_database_is_a_warning_not_corruption(tmp_path: Path) -> None:
    path = tmp_path / "mtbbs.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE users (id TEXT)")
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        result = check_database(path, timeout=0.05, previous_integrity="ok")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    fields = result.to_fields()
    assert fields["healthy"] is False and fields["severity"] == "warning"
    assert "locked" in str(fields["error"])
    assert fields["integrity"] == "ok"  # the last result, not "error"
    assert check_severity("database", fields) is Status.WARNING


def test_a_missing_database_is_critical(tmp_path: Path) -> None:
    fields = check_database(tmp_path / "nowhere.db").to_fields()
    assert fields["severity"] == "critical"
