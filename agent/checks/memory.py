"""The memory check: RSS and VMS of the BBS process, and the system's usage.

The BBS process is found, in this order of preference, by an explicit pid,
by a pidfile, as the process listening on the BBS's telnet port, or by
matching a text against each process's *program* (its executable name, or
for an interpreter the script or ``-m`` module it runs; further words of the
text must be arguments of its command line, as in ``uvicorn app.main:app``,
how MTBBS is started). The port comes first because it finds MTBBS however
it was started (uvicorn with or without ``--reload``, ``python -m app.main``)
and writes no pidfile; seeing which process owns another user's socket needs
privileges, so when the port cannot tell, the match is tried. Matching the
program rather than the whole command line keeps ``grep uvicorn`` and
``mtbbs-health-check --match uvicorn`` from being mistaken for the BBS; the
checker itself and its ancestors (the agent, the shell of a cron job) are
never candidates. A BBS that cannot be found is an unhealthy result with an
``error`` naming what was looked for, not a crash,
rated ``critical``: the BBS is not running. Memory over a threshold is
rated ``warning``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.checks.results import MemoryResult
from wire.state import SEVERITY_CRITICAL, SEVERITY_WARNING

logger = logging.getLogger(__name__)

MB = 1024 * 1024
INTERPRETERS = ("python", "pypy")
# Interpreter options that take the next argument as their value.
OPTIONS_WITH_VALUE = frozenset({"-W", "-X", "-Q"})


class ProcessNotFound(Exception):
    """The BBS process could not be found; the message says what was tried."""


@dataclass(frozen=True)
class FoundProcess:
    """The BBS process and how it was found."""

    process: psutil.Process
    found_by: str


def program_words(cmdline: list[str], name: str = "") -> list[str]:
    """What a process runs: its executable, and an interpreter's script or module."""
    words = [name] if name else []
    if not cmdline:
        return words
    words.append(os.path.basename(cmdline[0]))
    if not os.path.basename(cmdline[0]).startswith(INTERPRETERS):
        return words
    args = iter(cmdline[1:])
    for arg in args:
        if arg == "-m":
            words.append(next(args, ""))
            break
        if arg.startswith("-m") and len(arg) > 2:
            words.append(arg[2:])
            break
        if arg == "-c":
            break
        if arg in OPTIONS_WITH_VALUE:
            next(args, None)
            continue
        if arg.startswith("-"):
            continue
        words.append(arg)
        break
    return [w for w in words if w]


def _excluded_pids() -> set[int]:
    """The checker and its ancestors: never the BBS."""
    pids = {os.getpid()}
    try:
        pids.update(p.pid for p in psutil.Process().parents())
    except psutil.Error:
        pids.add(os.getppid())
    return pids


def _read_pidfile(pidfile: Path) -> int:
    try:
        text = pidfile.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        raise ProcessNotFound(f"BBS pidfile {pidfile} does not exist") from None
    except OSError as exc:
        raise ProcessNotFound(f"BBS pidfile {pidfile} cannot be read: "
                              f"{exc.strerror or exc}") from None
    first = text.split()[0] if text.split() else ""
    if not first.isdigit() or int(first) <= 0:
        raise ProcessNotFound(f"BBS pidfile {pidfile} does not hold a process id")
    return int(first)


def _by_pid(pid: int, source: str) -> psutil.Process:
    if pid in _excluded_pids():
        raise ProcessNotFound(f"BBS process {pid} ({source}) is the checker itself or its "
                              "parent")
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            raise ProcessNotFound(f"BBS process {pid} ({source}) has exited (zombie)")
        return process
    except psutil.NoSuchProcess:
        raise ProcessNotFound(f"BBS process {pid} ({source}) is not running") from None
    except psutil.AccessDenied:
        raise ProcessNotFound(f"BBS process {pid} ({source}) cannot be inspected: "
                              "access denied") from None


def _oldest(processes: list[psutil.Process]) -> psutil.Process:
    """Forked workers share the parent's program and socket: the oldest is the server."""
    def started(process: psutil.Process) -> tuple[float, int]:
        try:
            return float(process.create_time()), process.pid
        except psutil.Error:
            return float("inf"), process.pid

    return min(processes, key=started)


def _by_port(port: int) -> psutil.Process:
    """The process listening on TCP ``port`` (on any address)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        raise ProcessNotFound(f"the listener on port {port} cannot be looked up: "
                              "access denied") from None
    except (OSError, psutil.Error) as exc:
        raise ProcessNotFound(f"the listener on port {port} cannot be looked up: "
                              f"{exc}") from None
    listening = [c for c in connections
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    if not listening:
        raise ProcessNotFound(f"nothing listens on port {port}")
    visible = {c.pid for c in listening if c.pid is not None}
    if not visible:
        # The kernel shows the socket but not its owner: another user's
        # process, whose open files only root (or that user) may read.
        raise ProcessNotFound(f"port {port} is open but its process is not visible to this "
                              "user (run the agent as root or as the BBS's user)")
    pids = visible - _excluded_pids()
    if not pids:
        raise ProcessNotFound(f"port {port} is held by the checker itself or its parent")
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    if not processes:
        raise ProcessNotFound(f"the process listening on port {port} has exited")
    return _oldest(processes)


def _by_match(match: str) -> psutil.Process:
    excluded = _excluded_pids()
    program, *arguments = match.split() or [match]
    candidates: list[tuple[float, int, psutil.Process]] = []
    for process in psutil.process_iter(["name", "cmdline", "create_time"]):
        if process.pid in excluded:
            continue
        info = process.info
        cmdline = list(info.get("cmdline") or [])
        words = program_words(cmdline, info.get("name") or "")
        if (any(program in word for word in words)
                and all(argument in cmdline[1:] for argument in arguments)):
            candidates.append((float(info.get("create_time") or 0.0), process.pid, process))
    if not candidates:
        raise ProcessNotFound(f"no BBS process found whose program matches {match!r}")
    # Forked workers share the parent's program: the oldest is the server.
    candidates.sort(key=lambda item: (item[0], item[1]))
    return candidates[0][2]


def find_bbs_process(pid: int | None = None, pidfile: Path | None = None,
                     match: str = "", port: int | None = None) -> FoundProcess:
    """The BBS process by ``pid``, else ``pidfile``, else the listener on
    ``port``, else ``match``."""
    if pid is not None:
        return FoundProcess(_by_pid(pid, "configured pid"), "pid")
    if pidfile is not None:
        return FoundProcess(_by_pid(_read_pidfile(pidfile), f"from {pidfile}"), "pidfile")
    not_by_port = None
    if port:
        try:
            return FoundProcess(_by_port(port), "port")
        except ProcessNotFound as exc:
            not_by_port = str(exc)
    if match:
        try:
            return FoundProcess(_by_match(match), "match")
        except ProcessNotFound as exc:
            if not_by_port is None:
                raise
            raise ProcessNotFound(f"{not_by_port}; {exc}") from None
    if not_by_port is not None:
        raise ProcessNotFound(not_by_port)
    raise ProcessNotFound("no way to find the BBS process is configured "
                          "(set bbs_pid, bbs_pidfile, bbs_port or bbs_match)")


def _system_percent() -> float | None:
    try:
        return round(float(psutil.virtual_memory().percent), 1)
    except (OSError, psutil.Error) as exc:
        logger.debug("system memory unavailable: %s", exc)
        return None


def check_memory(
    *,
    pid: int | None = None,
    pidfile: Path | None = None,
    match: str = "",
    port: int | None = None,
    rss_threshold_mb: float = 500.0,
    system_threshold_percent: float = 90.0,
) -> MemoryResult:
    """Memory of the BBS process and the system against the two thresholds."""
    system = _system_percent()
    def failed(error: str, severity: str = SEVERITY_CRITICAL) -> MemoryResult:
        return MemoryResult(healthy=False, system_percent=system, error=error,
                            severity=severity,
                            warning_threshold_process_mb=rss_threshold_mb,
                            warning_threshold_system_percent=system_threshold_percent)

    try:
        found = find_bbs_process(pid, pidfile, match, port)
        memory = found.process.memory_info()
    except ProcessNotFound as exc:
        return failed(str(exc))
    except psutil.NoSuchProcess:
        return failed("BBS process exited while being measured")
    except psutil.AccessDenied:
        # The process runs; only its figures are hidden from us.
        return failed("BBS process memory cannot be read: access denied", SEVERITY_WARNING)
    rss_mb = round(memory.rss / MB, 1)
    vms_mb = round(memory.vms / MB, 1)
    healthy = rss_mb < rss_threshold_mb and (system is None or system < system_threshold_percent)
    error = None if system is not None else "system memory usage unavailable"
    return MemoryResult(healthy=healthy, process_rss_mb=rss_mb, process_vms_mb=vms_mb,
                        system_percent=system, pid=found.process.pid, found_by=found.found_by,
                        error=error, severity=None if healthy else SEVERITY_WARNING,
                        warning_threshold_process_mb=rss_threshold_mb,
                        warning_threshold_system_percent=system_threshold_percent)
