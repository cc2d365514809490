"""The spool on its own: order, bound and drop count, sequence across restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.spool import Spool, SpoolError, inspect
from wire.messages import Report, decode


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


def test_an_unreadable_spool_is_put_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with Spool(path, max_reports=10) as spool:
        assert spool.add(maker()).seq == 1
    assert len(list(tmp_path.glob("s.db.corrupt-*"))) == 1


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
