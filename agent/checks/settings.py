"""The ``[checks]`` configuration section: what to check and the limits.

Shared by the health-check CLI and the agent daemon, so both judge a host by
the same thresholds. Built once at the CLI edge with
``wire.config.load_section(CheckSettings, document, "checks", env, overrides)``
and passed down; the checks never read the environment. The command-line
flags that override it are defined here once too (``add_check_options`` and
``check_overrides``), for ``mtbbs-health-check`` and ``mtbbs-agent run``.
"""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.config import non_negative, percentage, positive, setting
from wire.keys import valid_host_id

SECTION = "checks"


def default_host_id() -> str:
    """This machine's short host name, reduced to a valid host id."""
    try:
        name = socket.gethostname().split(".", 1)[0]
    except OSError:
        name = ""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).lstrip("._-")[:64]
    return name if valid_host_id(name) else "localhost"


def _host_id(value: Any) -> str | None:
    if not valid_host_id(str(value)):
        return "must be 1-64 characters of letters, digits, '.', '_' or '-', starting " \
               "with a letter or digit"
    return None


def _pid(value: Any) -> str | None:
    return None if value > 0 else "must be a process id greater than 0"


def _port_or_off(value: Any) -> str | None:
    return None if 0 <= value <= 65_535 else "must be a TCP port (1-65535), or 0 for none"


@dataclass(frozen=True)
class CheckSettings:
    """Paths, process lookup and thresholds of the host checks."""

    host: str = setting(default_host_id(), "host id under which this BBS's state is kept "
                        "(default: the short host name)", check=_host_id)
    db: Path = setting(Path("data/mtbbs.db"), "the BBS's SQLite database")
    data_dir: Path = setting(Path("data"), "directory whose file system the disk check "
                             "measures")
    db_timeout: float = setting(2.0, "seconds the database check waits for a lock before "
                                "reporting the database as locked", check=positive)
    disk_percent: float = setting(90.0, "disk usage (percent) at or above which disk_space "
                                  "is unhealthy", check=percentage)
    process_rss_mb: float = setting(500.0, "resident memory (MB) of the BBS process at or "
                                    "above which memory is unhealthy", check=positive)
    system_memory_percent: float = setting(90.0, "system memory usage (percent) at or above "
                                           "which memory is unhealthy", check=percentage)
    max_sessions: int = setting(100, "more active sessions than this is unhealthy (MTBBS "
                                "TELNET_MAX_CONNECTIONS)", check=non_negative)
    max_same_ip: int = setting(3, "more sessions from one IP address than this is unhealthy "
                               "(MTBBS MAX_SAME_IP)", check=non_negative)
    bbs_pid: int | None = setting(None, "process id of the BBS (first choice when set)",
                                  check=_pid)
    bbs_pidfile: Path | None = setting(None, "file holding the BBS's process id (used when "
                                       "bbs_pid is not set)")
    bbs_port: int | None = setting(None, "TCP port the BBS listens on: the process listening "
                                   "there is the BBS (after bbs_pid and bbs_pidfile, before "
                                   "bbs_match). The agent uses the [probe] port when this is "
                                   "not set; 0 turns the lookup off", check=_port_or_off)
    bbs_match: str = setting("uvicorn app.main:app", "how the BBS's command line reads, when "
                             "no other way found it: the first word is matched against each "
                             "process's program (executable, script or -m module), each "
                             "further word must be one of its arguments (MTBBS runs as "
                             "uvicorn app.main:app); empty disables the search")


def add_check_options(parser: argparse.ArgumentParser, *, host_help: str,
                      omit: Collection[str] = ()) -> None:
    """The flags that override ``[checks]`` settings, in two help groups.

    ``host_help`` says what the host id is for in this command; flags named
    in ``omit`` (e.g. ``"--db-timeout"``) are left out.
    """
    checks = parser.add_argument_group("what to check ([checks] settings)")
    limits = parser.add_argument_group("thresholds")

    def add(group: argparse._ArgumentGroup, flag: str, **spec: Any) -> None:
        if flag not in omit:
            group.add_argument(flag, **spec)

    add(checks, "--db", metavar="PATH", help="SQLite database (default data/mtbbs.db)")
    add(checks, "--data-dir", metavar="DIR", help="directory for the disk check (default data)")
    add(checks, "--host", metavar="ID", help=host_help)
    add(checks, "--pid", type=int, metavar="PID", help="process id of the BBS")
    add(checks, "--pidfile", metavar="FILE", help="file holding the BBS's process id")
    add(checks, "--match", metavar="TEXT",
        help="find the BBS by its command line (default 'uvicorn app.main:app')")
    add(checks, "--db-timeout", type=float, metavar="SECONDS",
        help="how long to wait for a database lock (default 2)")
    add(limits, "--disk-threshold", type=float, metavar="PERCENT",
        help="disk usage warning threshold (default 90)")
    add(limits, "--rss-threshold", type=float, metavar="MB",
        help="BBS process RSS warning threshold (default 500)")
    add(limits, "--system-memory-threshold", type=float, metavar="PERCENT",
        help="system memory usage warning threshold (default 90)")
    add(limits, "--max-sessions", type=int, metavar="N",
        help="more active sessions than N is a warning (default 100)")
    add(limits, "--max-same-ip", type=int, metavar="N",
        help="more sessions from one IP than N is a warning (default 3)")


def check_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[checks]`` settings given by the flags of ``add_check_options``.

    A flag the command left out counts as not given.
    """
    given = vars(args)
    return {
        "db": given.get("db"),
        "data_dir": given.get("data_dir"),
        "host": given.get("host"),
        "bbs_pid": given.get("pid"),
        "bbs_pidfile": given.get("pidfile"),
        "bbs_match": given.get("match"),
        "db_timeout": given.get("db_timeout"),
        "disk_percent": given.get("disk_threshold"),
        "process_rss_mb": given.get("rss_threshold"),
        "system_memory_percent": given.get("system_memory_threshold"),
        "max_sessions": given.get("max_sessions"),
        "max_same_ip": given.get("max_same_ip"),
    }
