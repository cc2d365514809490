"""The ``[checks]`` configuration section: what to check and the limits.

Shared by the health-check CLI and the agent daemon, so both judge a host by
the same thresholds. Built once at the CLI edge with
``wire.config.load_section(CheckSettings, document, "checks", env, overrides)``
and passed down; the checks never read the environment.
"""

from __future__ import annotations

import re
import socket
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
    bbs_match: str = setting("telnet_server", "text matched against each process's program "
                             "(executable, script or -m module) when neither bbs_pid nor "
                             "bbs_pidfile is set; empty disables the search")
