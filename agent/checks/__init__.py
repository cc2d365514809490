"""The four host checks of the seed: database, sessions, disk_space, memory.

Each check is a function of its inputs returning a frozen result
(:mod:`agent.checks.results`); :func:`run_checks` runs all four with one
:class:`CheckSettings` and returns the field maps that go into
``wire.messages.Report.checks`` and the health-check CLI's JSON, in the
seed's order. Judging a whole report (OK / WARNING / CRITICAL) is
``wire.state.report_status``; formatting happens in the CLIs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.checks.database import NOT_CHECKED, check_database
from agent.checks.disk import check_disk
from agent.checks.memory import check_memory, find_bbs_process
from agent.checks.results import (
    DatabaseResult,
    DiskResult,
    MemoryResult,
    Session,
    SessionsResult,
)
from agent.checks.sessions import check_sessions, client_ip
from agent.checks.settings import CheckSettings, default_host_id
from wire.keys import KeySpace

if TYPE_CHECKING:  # types only: the health check needs no message codec
    from wire.messages import FieldValue

__all__ = [
    "CHECK_ORDER",
    "NOT_CHECKED",
    "CheckSettings",
    "DatabaseResult",
    "DiskResult",
    "MemoryResult",
    "Session",
    "SessionsResult",
    "check_database",
    "check_disk",
    "check_memory",
    "check_sessions",
    "client_ip",
    "default_host_id",
    "find_bbs_process",
    "run_checks",
]

logger = logging.getLogger(__name__)

CHECK_ORDER = ("database", "sessions", "disk_space", "memory")


def _safely(name: str, check: Callable[[], Any]) -> dict[str, FieldValue]:
    """The check's fields; a bug in one check must not lose the other three."""
    try:
        fields: dict[str, FieldValue] = check().to_fields()
        return fields
    except Exception as exc:  # reported as the check's own failure, with the traceback logged
        logger.exception("the %s check failed unexpectedly", name)
        return {"healthy": False, "error": f"check failed: {type(exc).__name__}: {exc}"[:300]}


def run_checks(
    settings: CheckSettings,
    *,
    redis_client: Any | None,
    keys: KeySpace,
    run_integrity: bool = True,
    previous_integrity: str | None = None,
) -> dict[str, dict[str, FieldValue]]:
    """Run the four checks; ``{name: fields}`` in the seed's order.

    ``run_integrity`` False skips the database's ``PRAGMA quick_check`` and
    reports ``previous_integrity`` (or ``not checked``) instead, so a daemon
    can run the expensive part less often than the rest. Never raises: every
    failure, even a bug in one check, is that check's unhealthy result.
    """
    return {
        "database": _safely("database", lambda: check_database(
            settings.db, timeout=settings.db_timeout, run_integrity=run_integrity,
            previous_integrity=previous_integrity)),
        "sessions": _safely("sessions", lambda: check_sessions(
            redis_client, keys, settings.host, max_sessions=settings.max_sessions,
            max_same_ip=settings.max_same_ip)),
        "disk_space": _safely("disk_space", lambda: check_disk(
            settings.data_dir, threshold=settings.disk_percent)),
        "memory": _safely("memory", lambda: check_memory(
            pid=settings.bbs_pid, pidfile=settings.bbs_pidfile, match=settings.bbs_match,
            port=settings.bbs_port or None,
            rss_threshold_mb=settings.process_rss_mb,
            system_threshold_percent=settings.system_memory_percent)),
    }
