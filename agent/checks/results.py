"""Result types of the four host checks, kept together.

Each check returns one of these frozen dataclasses; ``to_fields`` turns it
into the map that travels in a :class:`wire.messages.Report` and that the
health-check CLI prints as JSON. Field names are the seed's (``size_mb``,
``percent_used``, ``warning_threshold_process_mb``, ...) plus ``healthy``;
values are only wire-encodable scalars, and the session list is a tuple of
small maps of scalars. ``error`` (and ``severity``, how the fleet rates the
problem: ``warning`` or ``critical``, see ``wire.state.check_severity``)
appear only when something went wrong, so a healthy result looks exactly
like the seed's example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wire.state import SEVERITY_FIELD

if TYPE_CHECKING:  # types only: the health check needs no message codec
    from wire.messages import FieldValue, Scalar


def _fields(pairs: list[tuple[str, Any]], error: str | None,
            severity: str | None = None) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = dict(pairs)
    if error is not None:
        fields["error"] = error
    if severity is not None:
        fields[SEVERITY_FIELD] = severity
    return fields


@dataclass(frozen=True)
class DatabaseResult:
    """The BBS database: reachable, intact, how big, how many tables.

    ``integrity`` is the first line of ``PRAGMA quick_check`` (``ok`` when
    intact), the previous run's value when the check was skipped this time,
    or ``not checked``. ``integrity_checked`` says which; ``integrity_age_s``
    (set by the agent's daemon) how many seconds before the report the
    shown result was found. A database that is only locked by a busy writer
    is rated ``warning``, any other problem ``critical``.
    """

    healthy: bool
    path: str
    integrity: str | None = None
    size_bytes: int | None = None
    size_mb: float | None = None
    table_count: int | None = None
    integrity_checked: bool = False
    journal_mode: str | None = None
    error: str | None = None
    severity: str | None = None

    def to_fields(self) -> dict[str, FieldValue]:
        """The seed's JSON fields, in the seed's order."""
        return _fields(
            [
                ("healthy", self.healthy),
                ("integrity", self.integrity),
                ("size_bytes", self.size_bytes),
                ("size_mb", self.size_mb),
                ("table_count", self.table_count),
                ("path", self.path),
                ("integrity_checked", self.integrity_checked),
                ("journal_mode", self.journal_mode),
            ],
            self.error,
            self.severity,
        )


@dataclass(frozen=True)
class Session:
    """One active session as the sessions check lists it."""

    client_id: str
    user_id: str | None
    connected_at: str | None
    state: str

    def to_map(self) -> dict[str, Scalar]:
        """The session as a small map of scalars."""
        return {
            "client_id": self.client_id,
            "user_id": self.user_id,
            "connected_at": self.connected_at,
            "state": self.state,
        }


@dataclass(frozen=True)
class SessionsResult:
    """The host's active sessions as stored in Redis.

    ``available`` is False when Redis could not be read; the result is then
    healthy (a monitor outage is not a BBS problem) with ``error`` saying why,
    and the counts are None because they are unknown, not zero.
    """

    healthy: bool
    available: bool
    host: str
    active_sessions: int | None = None
    sessions: tuple[Session, ...] = ()
    guests: int | None = None
    logged_in: int | None = None
    not_logged_in: int | None = None
    top_ip: str | None = None
    top_ip_sessions: int | None = None
    max_sessions: int = 100
    max_same_ip: int = 3
    sessions_truncated: bool = False
    invalid_entries: int = 0
    error: str | None = None

    def to_fields(self) -> dict[str, FieldValue]:
        """The seed's fields (``active_sessions``, ``sessions``) and the limits."""
        return _fields(
            [
                ("healthy", self.healthy),
                ("active_sessions", self.active_sessions),
                ("sessions", tuple(s.to_map() for s in self.sessions)),
                ("available", self.available),
                ("host", self.host),
                ("guests", self.guests),
                ("logged_in", self.logged_in),
                ("not_logged_in", self.not_logged_in),
                ("top_ip", self.top_ip),
                ("top_ip_sessions", self.top_ip_sessions),
                ("max_sessions", self.max_sessions),
                ("max_same_ip", self.max_same_ip),
                ("sessions_truncated", self.sessions_truncated),
                ("invalid_entries", self.invalid_entries),
            ],
            self.error,
        )


@dataclass(frozen=True)
class DiskResult:
    """Space on the file system of the BBS's data directory."""

    healthy: bool
    path: str
    total_gb: float | None = None
    used_gb: float | None = None
    free_gb: float | None = None
    percent_used: float | None = None
    warning_threshold: float = 90
    error: str | None = None

    def to_fields(self) -> dict[str, FieldValue]:
        """The seed's JSON fields, in the seed's order, and the path measured."""
        return _fields(
            [
                ("healthy", self.healthy),
                ("total_gb", self.total_gb),
                ("used_gb", self.used_gb),
                ("free_gb", self.free_gb),
                ("percent_used", self.percent_used),
                ("warning_threshold", _plain_number(self.warning_threshold)),
                ("path", self.path),
            ],
            self.error,
        )


@dataclass(frozen=True)
class MemoryResult:
    """Memory of the BBS process and of the whole system.

    ``found_by`` says how the process was found (``pid``, ``pidfile`` or
    ``match``); when it was not found the process figures are None, the
    result is unhealthy, rated ``critical`` (the BBS is not running), and
    ``error`` says what was looked for.
    """

    healthy: bool
    process_rss_mb: float | None = None
    process_vms_mb: float | None = None
    system_percent: float | None = None
    warning_threshold_process_mb: float = 500
    warning_threshold_system_percent: float = 90
    pid: int | None = None
    found_by: str | None = None
    error: str | None = None
    severity: str | None = None

    def to_fields(self) -> dict[str, FieldValue]:
        """The seed's JSON fields, in the seed's order, and the process found."""
        return _fields(
            [
                ("healthy", self.healthy),
                ("process_rss_mb", self.process_rss_mb),
                ("process_vms_mb", self.process_vms_mb),
                ("system_percent", self.system_percent),
                ("warning_threshold_process_mb",
                 _plain_number(self.warning_threshold_process_mb)),
                ("warning_threshold_system_percent",
                 _plain_number(self.warning_threshold_system_percent)),
                ("pid", self.pid),
                ("found_by", self.found_by),
            ],
            self.error,
            self.severity,
        )


def _plain_number(value: float) -> int | float:
    """90.0 as 90, so thresholds print as the seed shows them."""
    return int(value) if float(value).is_integer() else float(value)
