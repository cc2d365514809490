"""The demo BBS in-process: limits, timeouts and its reporter calls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.reporter import SessionReporter
from demobbs.db import BbsDatabase
from demobbs.server import DemoBbs, DemoSettings


async def read_until(reader: asyncio.StreamReader, text: str) -> str:
    data = await asyncio.wait_for(reader.readuntil(text.encode()), 10)
    return data.decode("utf-8")


async def read_all(reader: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(reader.read(), 10)).decode("utf-8")


def run_bbs(tmp_path: Path, scenario: Any, **settings: Any) -> SessionReporter:
    """Run ``scenario(bbs, port)`` against an in-process BBS; returns its reporter."""
    database = BbsDatabase(tmp_path / "mtbbs.db")
    database.initialize()
    # Not started and no Redis: the reporter still keeps its table, which is
    # what these tests look at.
    reporter = SessionReporter("redis://127.0.0.1:1/0", "bbs-01")

    async def main() -> None:
        bbs = DemoBbs(DemoSettings(port=1, **settings), database, reporter)
        bbs._server = await asyncio.start_server(bbs._accept, "127.0.0.1", 0)
        port = bbs._server.sockets[0].getsockname()[1]
        try:
            await scenario(bbs, port)
        finally:
            await bbs.stop()

    try:
        asyncio.run(main())
    finally:
        database.close()
        reporter.close(0.1)
    return reporter


def test_idle_clients_are_disconnected(tmp_path: Path) -> None:
    async def scenario(bbs: DemoBbs, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await read_until(reader, "login: ")
        assert len(bbs.reporter.sessions()) == 1
        assert "Idle timeout" in await read_all(reader)
        writer.close()

    reporter = run_bbs(tmp_path, scenario, idle_timeout=0.2)
    assert reporter.sessions() == []
    assert reporter.stats()["queue"] == 2  # connected, disconnected


def test_too_many_connections_are_turned_away(tmp_path: Path) -> None:
    async def scenario(bbs: DemoBbs, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await read_until(reader, "login: ")
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        assert "Too many connections" in await read_all(reader2)
        assert [s.state for s in bbs.reporter.sessions()] == ["connected"]
        writer.close()
        writer2.close()

    reporter = run_bbs(tmp_path, scenario, max_connections=1)
    assert reporter.stats()["queued"] == 2  # only the first client was reported


def test_stop_unregisters_every_session(tmp_path: Path) -> None:
    async def scenario(bbs: DemoBbs, port: int) -> None:
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for reader, _writer in clients:
            await read_until(reader, "login: ")
        assert len(bbs.reporter.sessions()) == 3

    reporter = run_bbs(tmp_path, scenario)
    assert reporter.sessions() == []
    assert reporter.stats()["queued"] == 6


def test_a_damaged_database_is_refused_with_the_way_out(tmp_path: Path, capsys: Any) -> None:
    from demobbs.server import EXIT_ERROR, main

    damaged = tmp_path / "mtbbs.db"
    damaged.write_bytes(b"not a database, just bytes\n" * 400)
    assert main(["--db", str(damaged), "--port", "2399", "--redis-url",
                 "redis://127.0.0.1:1/0"]) == EXIT_ERROR
    error = capsys.readouterr().err
    assert f"the demo database {damaged} cannot be used" in error
    assert "move it aside" in error and "fresh demo database" in error
    assert main(["--db", str(damaged), "--init-only"]) == EXIT_ERROR
    assert "move it aside" in capsys.readouterr().err
    # The file is left as it was, for the sysop to look at.
    assert damaged.read_bytes().startswith(b"not a database")


def test_bbs_listens_with_reuse_address(tmp_path: Path) -> None:
    """A port whose last connections are in TIME-WAIT must not stop a restart."""
    import socket

    database = BbsDatabase(tmp_path / "mtbbs.db")
    reporter = SessionReporter("redis://127.0.0.1:1/0", "bbs-01")

    async def main() -> int:
        # Port 0: the kernel picks one (the settings' check is load_section's).
        bbs = DemoBbs(DemoSettings(port=0, bind="127.0.0.1"), database, reporter)
        await bbs.start()
        assert bbs._server is not None
        try:
            return int(bbs._server.sockets[0].getsockopt(socket.SOL_SOCKET,
                                                         socket.SO_REUSEADDR))
        finally:
            await bbs.stop()

    try:
        assert asyncio.run(main()) != 0
    finally:
        database.close()
        reporter.close(0.1)
