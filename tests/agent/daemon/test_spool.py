"""The spool on its own: order, bound and drop count, sequence across restarts."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.spool import APPLICATION_ID, Spool, SpoolError, identify, inspect
from wire.messages import Report, decode

SPOOL_TABLES = ("CREATE TABLE reports (id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT "
                "NULL, observed_at REAL NOT NULL, payload BLOB NOT NULL);"
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);")


def maker(tag: str = "x", at: float = 1.8e9) -> Callable[[int, int], Report]:
    def make(epoch: int, seq: int) -> Report:
        return Report(host="bbs-01", agent_version="t", epoch=epoch, seq=seq,
                      observed_at=at + seq,
                      checks={"disk_space": {"healthy": True, "tag": tag}})
    return make


def payload_report(payload: bytes) -> Report:
    report = decode(payload)
    assert isinstance(report, Report)
    return report


def test_reports_come_out_in_order_with_rising_seq(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_reports=100) as spool:
        made = [spool.add(maker(str(i))) for i in range(5)]
        pending = spool.peek(10)
    assert [r.seq for r in made] == [1, 2, 3, 4, 5]
    assert [p.seq for p in pending] == [1, 2, 3, 4, 5]
    assert [payload_report(p.payload) for p in pending] == made


def test_seq_and_epoch_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path, max_reports=100, clock=lambda: 1_800_000_000.0) as spool:
        first = [spool.add(maker()) for _ in range(3)]
        spool.delivered(spool.peek(10)[-1].rowid, 0)
    with Spool(path, max_reports=100, clock=lambda: 1_900_000_000.0) as spool:
        later = spool.add(maker())
    assert first[0].epoch == later.epoch == 1_800_000_000_000
    assert later.seq == 4


def test_a_lost_spool_starts_a_newer_epoch(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path, max_reports=100, clock=lambda: 1_800_000_000.0) as spool:
        old = spool.add(maker())
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with Spool(path, max_reports=100, clock=lambda: 1_800_000_100.0) as spool:
        new = spool.add(maker())
    assert new.epoch > old.epoch
    assert new.seq == 1
    assert (new.epoch, new.seq) > (old.epoch, old.seq)


def test_a_full_spool_drops_the_oldest_and_the_next_report_carries_the_count(
        tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_reports=3) as spool:
        for i in range(7):
            spool.add(maker(str(i)))
        assert len(spool) == 3
        pending = spool.peek(10)
        assert [p.seq for p in pending] == [5, 6, 7]
        head = payload_report(pending[0].payload)
        assert head.dropped == 4
        assert [payload_report(p.payload).dropped for p in pending[1:]] == [0, 0]
        assert pending[0].carried == 4
        status = spool.status()
        assert (status.dropped_pending, status.dropped_total) == (4, 4)

        spool.delivered(pending[0].rowid, pending[0].carried)
        after = spool.peek(10)
        assert [p.seq for p in after] == [6, 7]
        assert payload_report(after[0].payload).dropped == 0
        assert spool.status().dropped_pending == 0
        assert spool.status().dropped_total == 4


def test_drops_made_while_a_report_is_in_flight_are_not_lost(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_reports=2) as spool:
        for _ in range(3):
            spool.add(maker())
        in_flight = spool.peek(1)[0]
        assert in_flight.carried == 1
        spool.add(maker())  # drops the in-flight report itself: one more drop
        spool.delivered(in_flight.rowid, in_flight.carried)
        head = spool.peek(1)[0]
        assert head.carried == 1
        assert payload_report(head.payload).dropped == 1


def test_a_second_agent_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path, max_reports=10), pytest.raises(SpoolError, match="another agent"):
        Spool(path, max_reports=10)
    with Spool(path, max_reports=10) as again:  # the lock went with the first
        assert len(again) == 0


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes, to show nothing changed."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


def test_a_new_spool_carries_the_agents_mark_in_its_header(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path, max_reports=10):
        header = path.read_bytes()[:100]
    assert header[68:72] == APPLICATION_ID.to_bytes(4, "big")
    assert identify(path) == "ours"
    assert not list(tmp_path.glob(".s.db.new-*"))


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database at all" * 200)
    before = snapshot(tmp_path)
    with pytest.raises(SpoolError, match=r"s\.db: is not an SQLite database, so not a spool"):
        Spool(path, max_reports=10)
    assert snapshot(tmp_path) == before  # no lock file, no .corrupt copy, same bytes


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_a_foreign_database_is_refused_and_left_alone(tmp_path: Path, journal_mode: str) -> None:
    path = tmp_path / "mtbbs.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA journal_mode={journal_mode}")
        db.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, user_id TEXT);"
                         "INSERT INTO users (user_id) VALUES ('sysop');")
    db.close()
    before = snapshot(tmp_path)
    with pytest.raises(SpoolError, match="did not make \\(tables: users\\)"):
        Spool(path, max_reports=10)
    with pytest.raises(SpoolError, match="did not make"):
        inspect(path, 10)
    assert snapshot(tmp_path) == before


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA application_id=1234")
        db.executescript(SPOOL_TABLES)
    db.close()
    with pytest.raises(SpoolError, match="another application \\(application_id 0x4d2\\)"):
        Spool(path, max_reports=10)


def test_a_directory_an_empty_file_and_a_path_under_a_file_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "spooldir"
    directory.mkdir()
    (directory / "keep.txt").write_text("mine")
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    plain = tmp_path / "plain.txt"
    plain.write_text("a file")
    before = snapshot(tmp_path)
    with pytest.raises(SpoolError, match="spooldir: is a directory, not a spool file"):
        Spool(directory, max_reports=10)
    with pytest.raises(SpoolError, match="empty.db: is an empty file"):
        Spool(empty, max_reports=10)
    with pytest.raises(SpoolError, match="plain.txt is a file, not a directory"):
        Spool(plain / "spool.db", max_reports=10)
    with pytest.raises(SpoolError, match="plain.txt is a file, not a directory"):
        Spool(plain / "deeper" / "spool.db", max_reports=10)
    assert snapshot(tmp_path) == before


def test_a_spool_from_before_the_mark_is_kept_and_marked(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SPOOL_TABLES)
        db.executescript("INSERT INTO meta VALUES ('epoch', 1700000000000), ('seq', 41);"
                         "INSERT INTO reports (seq, observed_at, payload) "
                         "VALUES (41, 1.0, x'00');")
    db.close()
    assert identify(path) == "legacy"
    with Spool(path, max_reports=10) as spool:
        assert (spool.epoch, len(spool)) == (1_700_000_000_000, 1)
        assert spool.add(maker()).seq == 42
    assert identify(path) == "ours"


def damage(path: Path) -> None:
    """Overwrite the pages after the first: the header (and its mark) stays."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xa5" * (len(data) - page)
    path.write_bytes(bytes(data))


def test_a_damaged_spool_of_ours_is_set_aside_with_its_losses_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.db"
    with Spool(path, max_reports=100) as spool:
        for _ in range(30):
            spool.add(maker("y" * 200))
    damage(path)
    with caplog.at_level(logging.ERROR, logger="agent.spool"), \
            Spool(path, max_reports=10) as spool:
        assert len(spool) == 0
        assert spool.add(maker()).seq == 1  # a new epoch starts over
    aside = [p for p in tmp_path.glob("s.db.corrupt-*") if not p.name.endswith("-wal")]
    assert len(aside) == 1
    message = caplog.records[-1].getMessage()
    assert message.startswith(f"Spool {path} is damaged (")
    assert f"moved it to {aside[0]} and started a new one; " in message
    assert message.endswith(("reports in it are lost", "how many reports it held is unknown"))


def test_inspect_reads_without_changing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path, max_reports=2, clock=lambda: 1_800_000_000.0) as spool:
        for _ in range(3):
            spool.add(maker(at=1_800_000_000.0))
        status = inspect(path, 2)
        assert status.pending == 2
        assert (status.oldest_seq, status.newest_seq, status.last_seq) == (2, 3, 3)
        assert status.oldest_observed_at == 1_800_000_002.0
        assert status.dropped_pending == 1
        assert status.epoch == 1_800_000_000_000
        assert len(spool) == 2
    with pytest.raises(SpoolError, match="does not exist"):
        inspect(tmp_path / "missing.db", 2)
