"""The seed-compatible health check against the seed's own script: CPU and peak RSS.

The seed's ``scripts/health_check.py`` imported its monitor (sqlite3,
psutil, json, argparse, datetime, os, shutil) and ran four checks: the
database (file, ``PRAGMA quick_check``, size, tables), sessions, disk space
(``shutil.disk_usage``) and memory (psutil, RSS/VMS and system percent),
then printed the report. The monitor logs (``[INFO] System monitor
initialized: ...``) and its ``check_health`` is a coroutine (the spec's
exporter example awaits it), so the script also imported logging and ran
the checks under ``asyncio.run``. ``BASELINE`` below does exactly that,
written from the seed's description. Both run side by side, alternating, on the same
database, each as a fresh process; CPU is the child's user+system time and
peak RSS its ``ru_maxrss`` (from ``os.wait4``).

Like the seed's script, our run has no session source configured, so it
reads no sessions; the ratios (ours / seed's) compare these two. A third
row, ``ours+redis``, points the session source at a Redis port nothing
listens on: all the work of a run that reads sessions but the network read,
to show what a configured Redis costs.

    python bench/bench_healthcheck.py [--rounds N]

prints the medians of each and the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BASELINE = r'''
import argparse, asyncio, json, logging, os, shutil, sqlite3, sys
from datetime import datetime
import psutil

logger = logging.getLogger("app.utils.monitor")

def database(path):
    if not os.path.exists(path):
        return {"healthy": False, "error": "Database file not found"}
    db = sqlite3.connect(path)
    try:
        integrity = db.execute("PRAGMA quick_check").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
    finally:
        db.close()
    size = os.path.getsize(path)
    return {"healthy": integrity == "ok", "integrity": integrity, "size_bytes": size,
            "size_mb": round(size / 1024 / 1024, 2), "table_count": tables, "path": path}

def sessions():
    return {"healthy": True, "active_sessions": 0, "sessions": []}

def disk(data_dir):
    usage = shutil.disk_usage(data_dir)
    percent = round(usage.used / usage.total * 100, 1)
    return {"healthy": percent < 90, "total_gb": round(usage.total / 1024**3, 1),
            "used_gb": round(usage.used / 1024**3, 1), "free_gb": round(usage.free / 1024**3, 1),
            "percent_used": percent, "warning_threshold": 90}

def memory(pid):
    process = psutil.Process(pid)
    info = process.memory_info()
    system = psutil.virtual_memory().percent
    rss = round(info.rss / 1024 / 1024, 1)
    return {"healthy": rss < 500 and system < 90, "process_rss_mb": rss,
            "process_vms_mb": round(info.vms / 1024 / 1024, 1), "system_percent": system,
            "warning_threshold_process_mb": 500, "warning_threshold_system_percent": 90}

parser = argparse.ArgumentParser()
parser.add_argument("--db")
parser.add_argument("--data-dir")
parser.add_argument("--pid", type=int)
parser.add_argument("--json", action="store_true")
args = parser.parse_args()

async def check_health():
    return {"database": database(args.db), "sessions": sessions(),
            "disk_space": disk(args.data_dir), "memory": memory(args.pid),
            "timestamp": datetime.now().isoformat()}

logger.info("System monitor initialized: db=%s, data_dir=%s", args.db, args.data_dir)
health = asyncio.run(check_health())
code = 0 if all(v["healthy"] for k, v in health.items() if k != "timestamp") else 1
print(json.dumps({"health": health, "exit_code": code, "status": "OK" if code == 0 else "WARNING"},
                 indent=2))
sys.exit(code)
'''


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """CPU seconds (user + system) and peak RSS in MiB of one run of ``argv``."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):
        raise SystemExit(f"{argv[0]} failed with exit code {process.returncode}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="runs of each (default 15)")
    args = parser.parse_args()
    ours = shutil.which("mtbbs-health-check") or str(
        Path(sys.executable).with_name("mtbbs-health-check"))
    with tempfile.TemporaryDirectory() as directory:
        database = Path(directory) / "mtbbs.db"
        with sqlite3.connect(database) as db:
            db.execute("CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT)")
            db.executemany("INSERT INTO users VALUES (?, ?)",
                           [(f"user{i}", "x" * 200) for i in range(5000)])
        baseline = Path(directory) / "health_check.py"
        baseline.write_text(BASELINE, encoding="utf-8")
        bbs = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTBBS_")}
        common = ["--db", str(database), "--data-dir", directory, "--pid", str(bbs.pid),
                  "--json"]
        seed_argv = [sys.executable, str(baseline), *common]
        argvs = {
            "seed": seed_argv,
            "ours": [ours, *common, "--host", "bench-bbs"],
            "ours+redis": [ours, *common, "--host", "bench-bbs", "--redis-url",
                           f"redis://127.0.0.1:{closed_port()}/0"],
        }
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in argvs}
        try:
            for argv in argvs.values():  # warm the page cache for all
                measure(argv, env)
            for _ in range(max(1, args.rounds)):
                for name, argv in argvs.items():
                    runs[name].append(measure(argv, env))
        finally:
            bbs.kill()
            bbs.wait()
    cpu = {name: statistics.median(c for c, _ in found) for name, found in runs.items()}
    rss = {name: statistics.median(r for _, r in found) for name, found in runs.items()}
    print(f"rounds: {max(1, args.rounds)} of each, medians")
    print(f"{'':10}  {'CPU s':>8}  {'peak RSS MiB':>12}")
    for name in argvs:
        print(f"{name:10}  {cpu[name]:8.3f}  {rss[name]:12.1f}")
    for name in ("ours", "ours+redis"):
        print(f"CPU ratio ({name} / seed): {cpu[name] / cpu['seed']:.2f}")
        print(f"peak RSS ratio ({name} / seed): {rss[name] / rss['seed']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
