"""The database check must not hold off the BBS's writers.

A separate writer process commits many small transactions, as the BBS does
when users post, with the busy timeout a BBS would use, while this process
runs the full database check (with ``quick_check``) in a loop. The writer
must finish every write; nothing here is timed.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.checks import check_database

WRITES = 1000
WRITER = """
import sqlite3, sys
path, writes = sys.argv[1], int(sys.argv[2])
# Python's default busy timeout (5 s), as an SQLite-backed BBS uses.
connection = sqlite3.connect(path, timeout=5.0)
connection.execute("PRAGMA synchronous=OFF")
for i in range(writes):
    with connection:
        connection.execute(
            "INSERT INTO messages (board_id, message_no, user_id, title, body, created_at) "
            "VALUES (1, ?, 'writer', 'concurrent', ?, '2025-01-05T00:00:00')",
            (100000 + i, "x" * 500))
    if i == 0:
        print("writing", flush=True)
connection.close()
print("done", flush=True)
"""


def count_writes(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute(
            "SELECT count(*) FROM messages WHERE user_id = 'writer'").fetchone()[0])
    finally:
        connection.close()


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_writer_completes_while_checks_run(make_db, journal_mode: str) -> None:
    path = make_db(f"busy-{journal_mode}.db", journal_mode=journal_mode, messages=6000)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(WRITES)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "writing"
    results = []
    deadline = time.monotonic() + 120  # a bound on the loop, not a measurement
    while writer.poll() is None and time.monotonic() < deadline:
        results.append(check_database(path, timeout=2.0))
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, f"the writer failed while checks ran: {err.strip()}"
    assert out.strip() == "done"
    assert count_writes(path) == WRITES
    print(f"{len(results)} checks overlapped the writer")
    assert results, "no check overlapped the writer"
    for result in results:
        # A check may find the file momentarily locked; it never damages or misreads it.
        assert result.healthy or (result.error or "").startswith("Database is locked"), \
            result.error
    assert check_database(path).healthy
