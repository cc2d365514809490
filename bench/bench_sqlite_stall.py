"""Benchmark: how long can the database check hold off the BBS's writers?

A writer process plays the BBS: it commits small transactions back to back
(one INSERT each, ``busy_timeout`` 5 s as a web/telnet server sets it) and
times every commit. The same writer runs twice per journal mode, in the same
run: alone (the reference) and while the agent's database check
(``agent.checks.database.check_database`` with its ``PRAGMA quick_check``)
runs in a loop in another process. Printed per mode: commits, the longest
and 99th percentile commit time with and without the checker, their ratio,
how many checks ran and how long the longest one took.

In rollback-journal mode a reader's SHARED lock keeps a committing writer
waiting until the reader's statement ends, so the longest stall is about
one quick_check of the file; in WAL mode readers never block the writer.

    python bench/bench_sqlite_stall.py [--size-mb 20] [--commits 2000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.checks.database import check_database


def make_database(path: Path, journal_mode: str, size_mb: float) -> None:
    """A database of about ``size_mb`` MB in ``journal_mode`` (wal or delete)."""
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA journal_mode={journal_mode}")
        db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, board TEXT, body TEXT)")
        db.execute("CREATE INDEX messages_board ON messages (board)")
        body = "x" * 900
        rows = int(size_mb * 1024 * 1024 / 1000)
        db.executemany("INSERT INTO messages (board, body) VALUES (?, ?)",
                       ((f"board{i % 50}", body) for i in range(rows)))
    if journal_mode == "wal":
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def writer(path: str, commits: int, pipe: Connection) -> None:
    """Commit ``commits`` one-row transactions; send back the commit times (s)."""
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    times = []
    errors = 0
    pipe.send("ready")
    pipe.recv()
    for i in range(commits):
        start = time.perf_counter()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO messages (board, body) VALUES (?, ?)",
                       (f"board{i % 50}", f"post {i}"))
            db.execute("COMMIT")
        except sqlite3.OperationalError:
            errors += 1
            try:
                db.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass
        times.append(time.perf_counter() - start)
    db.close()
    pipe.send({"times": times, "errors": errors})


def checker(path: str, stop: Any, pipe: Connection) -> None:
    """Run the database check (with quick_check) until told to stop."""
    durations = []
    unhealthy = 0
    pipe.send("ready")
    while not stop.is_set():
        start = time.perf_counter()
        result = check_database(path, run_integrity=True)
        durations.append(time.perf_counter() - start)
        if not result.healthy:
            unhealthy += 1
    pipe.send({"durations": durations, "unhealthy": unhealthy})


def run_writer(path: Path, commits: int, with_checker: bool) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    checker_proc = None
    checker_end = None
    if with_checker:
        checker_end, child_end = context.Pipe()
        checker_proc = context.Process(target=checker, args=(str(path), stop, child_end))
        checker_proc.start()
        checker_end.recv()
        time.sleep(0.2)  # the checker is in its loop before the writer starts
    writer_end, child_end = context.Pipe()
    writer_proc = context.Process(target=writer, args=(str(path), commits, child_end))
    writer_proc.start()
    writer_end.recv()
    writer_end.send("go")
    result = writer_end.recv()
    writer_proc.join(30)
    checks: dict[str, Any] = {"durations": [], "unhealthy": 0}
    if checker_proc is not None and checker_end is not None:
        stop.set()
        checks = checker_end.recv()
        checker_proc.join(30)
    times = sorted(result["times"])
    return {
        "commits": len(times) - result["errors"],
        "errors": result["errors"],
        "max_ms": round(times[-1] * 1000, 2),
        "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 3),
        "checks": len(checks["durations"]),
        "checks_unhealthy": checks["unhealthy"],
        "longest_check_ms": round(max(checks["durations"], default=0.0) * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=20.0, help="database size (default 20)")
    parser.add_argument("--commits", type=int, default=2000, help="commits per run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        for mode in ("wal", "delete"):
            path = Path(tmp) / f"bbs-{mode}.db"
            make_database(path, mode, args.size_mb)
            size = os.path.getsize(path)
            # A warm-up run first, so that neither measured run pays for a
            # cold page cache; then the reference and the run with the checker.
            run_writer(path, args.commits // 4, with_checker=False)
            alone = run_writer(path, args.commits, with_checker=False)
            checked = run_writer(path, args.commits, with_checker=True)
            ratio = checked["max_ms"] / alone["max_ms"] if alone["max_ms"] else float("inf")
            results[mode] = {"db_mb": round(size / 1024 / 1024, 1), "alone": alone,
                             "with_checker": checked, "max_stall_ratio": round(ratio, 1)}
            print(f"{mode:6} db {size / 1024 / 1024:5.1f} MB | writer alone: max "
                  f"{alone['max_ms']:7.2f} ms p99 {alone['p99_ms']:6.3f} ms | with checker: "
                  f"max {checked['max_ms']:7.2f} ms p99 {checked['p99_ms']:6.3f} ms "
                  f"({checked['checks']} checks, longest {checked['longest_check_ms']} ms, "
                  f"{checked['checks_unhealthy']} unhealthy) | commits "
                  f"{checked['commits']}/{args.commits}, errors {checked['errors']} | "
                  f"longest stall x{ratio:.1f} the reference", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    failed = any(r["with_checker"]["errors"] or r["alone"]["errors"] for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
