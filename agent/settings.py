"""Settings of the agent daemon: its schedule, spool and delivery (``[agent]``),
and the telnet probe (``[probe]``).

Both are frozen dataclasses filled by :func:`wire.config.load_section` at the
command-line edge and passed down; nothing here reads the environment.

The seed ran two background tasks: a health check every 5 minutes (with
SQLite's ``PRAGMA quick_check``) and a metrics collection every 10 minutes.
Here every report carries the health results; the seed's cadence is::

    [agent]
    interval = 300            # a report (cheap checks) every 5 minutes
    integrity_interval = 300  # quick_check with every one of them, as the seed did
    metrics_interval = 600    # the uptime metrics every 10 minutes
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.checks.telnet import DEFAULT_QUIT_TEXT
from wire.config import non_negative, one_of, positive, setting

# Where the spool lives when ``spool_path`` is not set. The system directory
# is the systemd unit's StateDirectory; a user who cannot write there (and is
# not root) gets a directory of their own under XDG_STATE_HOME.
SYSTEM_STATE_DIR = Path("/var/lib/mtbbs-agent")
USER_STATE_SUBDIR = "mtbbs-agent"
SPOOL_FILE = "spool.db"
SPOOL_DEFAULT_DOC = (f"{SYSTEM_STATE_DIR / SPOOL_FILE} for root or a user who can write "
                     f"{SYSTEM_STATE_DIR}, else $XDG_STATE_HOME/{USER_STATE_SUBDIR}/{SPOOL_FILE} "
                     f"(~/.local/state/{USER_STATE_SUBDIR}/{SPOOL_FILE})")

# The report's ``interval`` must stay within what wire.messages accepts.
MIN_INTERVAL = 0.1
MAX_INTERVAL = 86_400.0


def _interval(value: Any) -> str | None:
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        return f"must be between {MIN_INTERVAL} and {MAX_INTERVAL:.0f} seconds"
    return None


def _fraction(value: Any) -> str | None:
    return None if 0 <= value < 1 else "must be 0 or more and less than 1"


def _port(value: Any) -> str | None:
    return None if 1 <= value <= 65_535 else "must be a TCP port (1-65535)"


@dataclass(frozen=True)
class AgentSettings:
    """The ``[agent]`` section: schedule, spool and delivery of reports."""

    interval: float = setting(60.0, "seconds between cycles; each cycle runs the cheap checks "
                              "and publishes one report", check=_interval)
    integrity_interval: float = setting(300.0, "seconds between SQLite quick_checks of the BBS "
                                        "database (0: every cycle); the last result is "
                                        "repeated in between", check=non_negative)
    metrics_interval: float = setting(0.0, "seconds between measurements of the uptime metrics "
                                      "(0: every report); reports in between carry no "
                                      "'uptime' entry", check=non_negative)
    spool_path: Path | None = setting(None, "SQLite file that holds reports until Redis has "
                                      "them, and the report sequence (unset: "
                                      f"{SPOOL_DEFAULT_DOC})")
    spool_max_reports: int = setting(10_000, "most reports the spool keeps; beyond it the oldest "
                                     "are dropped and counted", check=positive)
    spool_sync: str = setting("full", "SQLite synchronous mode of the spool: full survives a "
                              "power cut, normal only a crash of the agent",
                              check=one_of("full", "normal"))
    stream_maxlen: int = setting(10_000, "approximate length this host's own reports stream is "
                                 "trimmed to (XADD MAXLEN ~); it bounds what waits for a "
                                 "collector that is down (the collector also trims the "
                                 "entries it has applied)", check=positive)
    replay_batch: int = setting(100, "reports sent per round trip when replaying the spool",
                                check=positive)
    host_key_file: Path | None = setting(None, "file with this host's 'host-id secret' line; "
                                         "when set, every report is signed (field sig)")
    backoff_initial: float = setting(1.0, "seconds before the first retry after Redis failed",
                                     check=positive)
    backoff_max: float = setting(60.0, "cap of the retry delay in seconds", check=positive)
    backoff_jitter: float = setting(0.2, "fraction of each delay taken off at random, so "
                                    "that many agents do not retry in step", check=_fraction)


@dataclass(frozen=True)
class ProbeSettings:
    """The ``[probe]`` section: the telnet probe of the BBS's own port."""

    enabled: bool = setting(True, "probe the BBS's telnet port every cycle (check 'telnet')")
    host: str = setting("127.0.0.1", "address the probe connects to")
    port: int = setting(2323, "telnet port of the BBS", check=_port)
    timeout: float = setting(5.0, "seconds to wait for the connection and for the first "
                             "bytes of the banner", check=positive)
    slow_ms: float = setting(2000.0, "a banner slower than this many milliseconds is unhealthy",
                             check=positive)
    quit_text: str = setting(DEFAULT_QUIT_TEXT, "sent after the banner before the probe "
                             "closes its side and reads until the BBS hangs up; each newline "
                             "(or the two characters \\n) is sent as CR LF. The default, three "
                             "empty lines, makes MTBBS's login prompt close the connection "
                             "itself, so MTBBS logs no error per probe; empty: just close")


def default_spool_path(env: Mapping[str, str] | None = None, *, euid: int | None = None,
                       system_dir: Path = SYSTEM_STATE_DIR) -> Path:
    """The spool used when ``[agent] spool_path`` is not set: always absolute.

    The same user gets the same answer from systemd, cron and a shell, in any
    working directory: root and any user who can write ``system_dir`` use
    it; other users use ``$XDG_STATE_HOME/mtbbs-agent`` (an absolute
    ``XDG_STATE_HOME`` only, as the XDG specification says), else
    ``~/.local/state/mtbbs-agent``.
    """
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if euid == 0 or os.access(system_dir, os.W_OK | os.X_OK):
        return system_dir / SPOOL_FILE
    state_home = env.get("XDG_STATE_HOME", "")
    if state_home and Path(state_home).is_absolute():
        return Path(state_home) / USER_STATE_SUBDIR / SPOOL_FILE
    home = env.get("HOME", "")
    if not home or not Path(home).is_absolute():
        raise ValueError(f"no default spool: {system_dir} is not writable and there is no "
                         "home directory; set [agent] spool_path or --spool")
    return Path(home) / ".local" / "state" / USER_STATE_SUBDIR / SPOOL_FILE
