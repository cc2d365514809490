"""Fixtures of the check tests: real SQLite files, a stand-in BBS process,
and the seed's output examples as the expected layout."""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# MTBBS's schema, reduced to what makes a realistic file: eight tables, as
# in the seed's example report ("Tables: 8").
MTBBS_SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, user_id TEXT UNIQUE NOT NULL, handle TEXT,
    password_hash TEXT, level INTEGER DEFAULT 1, created_at TEXT, last_login TEXT);
CREATE TABLE boards (id INTEGER PRIMARY KEY, board_id INTEGER UNIQUE, name TEXT,
    read_level INTEGER, write_level INTEGER);
CREATE TABLE messages (id INTEGER PRIMARY KEY, board_id INTEGER REFERENCES boards(board_id),
    message_no INTEGER, user_id TEXT, title TEXT, body TEXT, created_at TEXT);
CREATE INDEX messages_board ON messages(board_id, message_no);
CREATE TABLE mail (id INTEGER PRIMARY KEY, sender TEXT, recipient TEXT, subject TEXT,
    body TEXT, is_read INTEGER DEFAULT 0, created_at TEXT);
CREATE TABLE chat_logs (id INTEGER PRIMARY KEY, room TEXT, user_id TEXT, text TEXT,
    created_at TEXT);
CREATE TABLE access_logs (id INTEGER PRIMARY KEY, client_id TEXT, user_id TEXT, action TEXT,
    created_at TEXT);
CREATE TABLE system_settings (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE read_marks (user_id TEXT, board_id INTEGER, last_read INTEGER,
    PRIMARY KEY (user_id, board_id));
"""
MTBBS_TABLES = 8


def build_mtbbs_db(path: Path, *, journal_mode: str = "delete", messages: int = 3000) -> Path:
    """A healthy MTBBS-like database with some content (several hundred pages)."""
    rng = random.Random(7)
    # Varied text compresses nothing and fills pages like real posts do.
    bodies = ["".join(rng.choice("abcdefgh ") for _ in range(300)) for _ in range(64)]
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA journal_mode={journal_mode}")
    connection.executescript(MTBBS_SCHEMA)
    with connection:
        connection.executemany(
            "INSERT INTO users (user_id, handle, password_hash, created_at) VALUES (?, ?, ?, ?)",
            [(f"user{i}", f"Handle {i}", "x" * 60, "2025-01-01T00:00:00") for i in range(200)],
        )
        connection.executemany(
            "INSERT INTO boards (board_id, name, read_level, write_level) VALUES (?, ?, 0, 1)",
            [(i, f"Board {i}") for i in range(1, 21)],
        )
        connection.executemany(
            "INSERT INTO messages (board_id, message_no, user_id, title, body, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(1 + i % 20, i, f"user{i % 200}", f"title {i}",
              bodies[i % 64], "2025-01-02T00:00:00")
             for i in range(messages)],
        )
        connection.executemany(
            "INSERT INTO mail (sender, recipient, subject, body, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(f"user{i}", f"user{i + 1}", "hi", "hello " * 20, "2025-01-03T00:00:00")
             for i in range(100)],
        )
        connection.execute("INSERT INTO system_settings VALUES ('motd', 'Welcome')")
    if journal_mode == "wal":
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return path


@pytest.fixture
def mtbbs_db(tmp_path: Path) -> Path:
    """A healthy rollback-journal MTBBS database in a data directory."""
    data = tmp_path / "data"
    data.mkdir()
    return build_mtbbs_db(data / "mtbbs.db")


@pytest.fixture
def unreachable_redis_url() -> str:
    """A Redis URL on a loopback port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def make_db(tmp_path: Path) -> Callable[..., Path]:
    """``make_db(name, journal_mode=..., messages=...)`` builds another database."""

    def make(name: str = "other.db", **options: Any) -> Path:
        return build_mtbbs_db(tmp_path / name, **options)

    return make


BBS_SCRIPT = """
import os, sys, time
ballast = bytearray(int(sys.argv[1]) * 1024 * 1024)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1  # touch every page so it counts in RSS
if len(sys.argv) > 2:
    with open(sys.argv[2], "w") as handle:
        handle.write(f"{os.getpid()}\\n")
print("ready", flush=True)
time.sleep(120)
"""


class FakeBBS:
    """A real process whose program name is unique to the test."""

    def __init__(self, directory: Path, ballast_mb: int) -> None:
        self.token = f"mtbbs_telnet_server_{os.getpid()}_{time.monotonic_ns()}"
        self.script = directory / f"{self.token}.py"
        self.script.write_text(BBS_SCRIPT)
        self.pidfile = directory / "bbs.pid"
        self.process = subprocess.Popen(
            [sys.executable, str(self.script), str(ballast_mb), str(self.pidfile)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # bounded: the child prints at once or dies
        assert line.strip() == "ready", "stand-in BBS did not start"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def fake_bbs(tmp_path: Path) -> Iterator[FakeBBS]:
    """A stand-in BBS holding about 40 MB of resident memory."""
    bbs = FakeBBS(tmp_path, 40)
    yield bbs
    bbs.stop()


# -- the seed's examples (the public interface) --------------------------------

SEED_STANDARD = """\
============================================================
MTBBS Health Check Report
============================================================
Timestamp: 2025-01-15T10:30:45.123456

Database: ✅ OK

Sessions: ✅ OK
  - Active: 3

Disk Space: ✅ OK

Memory: ✅ OK

============================================================
✅ System Status: HEALTHY"""

SEED_VERBOSE = """\
============================================================
MTBBS Health Check Report
============================================================
Timestamp: 2025-01-15T10:30:45.123456

Database: ✅ OK
  - Integrity: ok
  - Size: 5.23 MB
  - Tables: 8

Sessions: ✅ OK
  - Active: 3
    - 192.168.1.100:54321: user=test_user, state=logged_in
    - 192.168.1.101:54322: user=guest, state=logged_in
    - 192.168.1.102:54323: user=admin, state=logged_in

Disk Space: ✅ OK
  - Total: 500.0 GB
  - Used: 250.5 GB (50.1%)
  - Free: 249.5 GB

Memory: ✅ OK
  - Process RSS: 45.2 MB
  - System Usage: 65.3%

============================================================
✅ System Status: HEALTHY"""

# The seed elides the session list as "[...]"; here it is the list above.
SEED_JSON = """\
{
  "health": {
    "database": {
      "healthy": true,
      "integrity": "ok",
      "size_bytes": 5483520,
      "size_mb": 5.23,
      "table_count": 8,
      "path": "data/mtbbs.db"
    },
    "sessions": {
      "healthy": true,
      "active_sessions": 3,
      "sessions": []
    },
    "disk_space": {
      "healthy": true,
      "total_gb": 500.0,
      "used_gb": 250.5,
      "free_gb": 249.5,
      "percent_used": 50.1,
      "warning_threshold": 90
    },
    "memory": {
      "healthy": true,
      "process_rss_mb": 45.2,
      "process_vms_mb": 123.4,
      "system_percent": 65.3,
      "warning_threshold_process_mb": 500,
      "warning_threshold_system_percent": 90
    },
    "timestamp": "2025-01-15T10:30:45.123456"
  },
  "exit_code": 0,
  "status": "OK"
}"""


@pytest.fixture
def seed_examples() -> dict[str, str]:
    """The seed's standard, verbose and JSON examples, verbatim."""
    return {"standard": SEED_STANDARD, "verbose": SEED_VERBOSE, "json": SEED_JSON}
