"""The per-host state as plain text, and how check results map to statuses.

The collector writes a host's state into one Redis hash of text fields so
that ``redis-cli HGETALL mtbbs:host:bbs-01`` is readable by a person; the
status CLI, the exporter and the alerter read it back. Both directions live
here so that writer and readers agree.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wire.replies import text as _text
from wire.status import Status

if TYPE_CHECKING:  # types only: the health check needs no message codec
    from wire.messages import FieldValue, Report, SessionInfo

# The seed's exit codes: a database problem is CRITICAL, anything else that
# is unhealthy (disk, memory, sessions, ...) is WARNING.
CRITICAL_CHECKS = frozenset({"database"})

# The fleet's severity policy (status, exporter, alert rules) rates each
# unhealthy check by what went wrong, since "the BBS does not answer" is
# the alarm a sysop cares about most. The agent writes its rating into the
# check's ``severity`` field; results without one (older agents) are rated
# from their figures by the same policy.
SEVERITY_FIELD = "severity"
SEVERITY_WARNING = "warning"
SEVERITY_CRITICAL = "critical"
_SEVERITIES = {SEVERITY_WARNING: Status.WARNING, SEVERITY_CRITICAL: Status.CRITICAL}

# Fields of the host hash that are not check results.
META_FIELDS = (
    "status", "last_seen", "last_seen_ms", "stream_id", "observed_at", "epoch", "seq",
    "agent_version", "clock_skew_s", "stale", "dropped_total", "checks", "unhealthy", "interval_s",
)

STALE_NO = "no"
STALE_WARNING = "warning"
STALE_CRITICAL = "critical"


def check_status(name: str, healthy: bool) -> Status:
    """The status of one check result under the seed's exit-code rules."""
    if healthy:
        return Status.OK
    return Status.CRITICAL if name in CRITICAL_CHECKS else Status.WARNING


def report_status(checks: Mapping[str, Mapping[str, Any]]) -> Status:
    """The worst status over a report's checks."""
    return checks_status(name for name, fields in checks.items() if not fields.get("healthy"))


def checks_status(unhealthy: Iterable[str]) -> Status:
    """The status a report whose checks named ``unhealthy`` failed has."""
    return Status.worst(check_status(name, False) for name in unhealthy)


def check_severity(name: str, fields: Mapping[str, Any]) -> Status:
    """The status of one check result under the fleet's severity policy.

    The agent's ``severity`` field when it has one; otherwise: a telnet
    probe that got no banner (refused, timed out, closed, silent) is
    CRITICAL and a slow banner WARNING; a memory check that found no BBS
    process is CRITICAL; a database problem is CRITICAL; anything else is
    WARNING.
    """
    if fields.get("healthy"):
        return Status.OK
    rated = _SEVERITIES.get(str(fields.get(SEVERITY_FIELD, "")))
    if rated is not None:
        return rated
    if name == "telnet":
        return Status.WARNING if _is_number(fields.get("banner_ms")) else Status.CRITICAL
    if name == "memory":
        return Status.WARNING if _is_number(fields.get("process_rss_mb")) else Status.CRITICAL
    return Status.CRITICAL if name in CRITICAL_CHECKS else Status.WARNING


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def severity_status(checks: Mapping[str, Mapping[str, Any]]) -> Status:
    """The worst status over a report's checks under the fleet's severity policy."""
    return Status.worst(check_severity(name, fields) for name, fields in checks.items())


def stale_status(stale: str) -> Status:
    """The status a staleness level imposes."""
    return {STALE_WARNING: Status.WARNING, STALE_CRITICAL: Status.CRITICAL}.get(stale, Status.OK)


def iso_from_ms(ms: int | float) -> str:
    """``2026-11-28T10:30:45Z`` (UTC, second precision) from unix milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def iso_from_seconds(seconds: float) -> str:
    """ISO text of unix seconds, with milliseconds, in UTC (the fraction rounded
    to microseconds, then cut to milliseconds, as datetime would)."""
    whole = math.floor(seconds)
    micros = round((seconds - whole) * 1e6)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{micros // 1000:03d}Z"


def plural(count: int, word: str) -> str:
    """``1 host``, ``2 hosts``."""
    return f"{count} {word if count == 1 else word + 's'}"


def age_text(seconds: float | None) -> str:
    """A short age for tables: ``4s``, ``2m05s``, ``3h07m`` or ``2d04h``; '-' for none.

    The web page, ``mtbbs-monitor watch`` and ``mtbbs-collector hosts`` all
    write ages this way, so a host's age reads the same in each.
    """
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def entry_id_ms(entry_id: bytes | str) -> int:
    """The Redis server time (ms) embedded in a stream entry id."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def float_text(value: float) -> str:
    """A float as stored text: rounded to 3 decimals, shortest form ('50.1',
    '2.0'); '' when not finite. Both zeros are '0.0', so that equal values
    always have equal texts."""
    if not math.isfinite(value):
        return ""
    text = repr(round(value, 3))
    return "0.0" if text == "-0.0" else text


def format_value(value: FieldValue) -> str:
    """A field value as stored text: booleans as true/false, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, tuple | list):
        return json.dumps([dict(v) for v in value], ensure_ascii=False)
    return str(value)


def flatten_checks(checks: Mapping[str, Mapping[str, FieldValue]]) -> dict[str, str]:
    """``check.field`` -> text for every scalar field of every check.

    List fields (the session list) are left out: sessions have their own
    hash, and a host hash of one line per figure stays readable.
    """
    flat: dict[str, str] = {}
    for name, fields in checks.items():
        for key, value in fields.items():
            text = field_text(value)
            if text is not None:
                flat[f"{name}.{key}"] = text
    return flat


def report_fields(report: Report, entry_ms: int, stale: str = STALE_NO) -> dict[str, str]:
    """The host hash written for ``report`` received at Redis time ``entry_ms``."""
    fields = report_meta(report, entry_ms, stale)
    fields.update(flatten_checks(report.checks))
    return fields


def report_meta(report: Report, entry_ms: int, stale: str = STALE_NO) -> dict[str, str]:
    """The fields of :func:`report_fields` that are not check results (see META_FIELDS
    less ``dropped_total``, which the collector keeps as a running sum)."""
    meta = report_summary(report, stale)
    meta.update(report_moment(report, entry_ms))
    return meta


def report_moment(report: Report, entry_ms: int) -> dict[str, str]:
    """The meta fields that every report changes: when it was seen and made, its seq."""
    return {
        "last_seen": iso_from_ms(entry_ms),
        "last_seen_ms": str(entry_ms),
        "observed_at": iso_from_seconds(report.observed_at),
        "seq": str(report.seq),
        "clock_skew_s": float_text(report.observed_at - entry_ms / 1000),
    }


def report_summary(report: Report, stale: str = STALE_NO) -> dict[str, str]:
    """The meta fields that follow from :func:`summary_key` (and ``stale``)."""
    unhealthy = sorted(name for name, fields in report.checks.items() if not fields.get("healthy"))
    status = severity_status(report.checks)
    if stale != STALE_NO:
        status = max(status, stale_status(stale))
    return {
        "status": status.name,
        "epoch": str(report.epoch),
        "agent_version": report.agent_version,
        "stale": stale,
        "interval_s": format_value(report.interval),
        "checks": ",".join(sorted(report.checks)),
        "unhealthy": ",".join(unhealthy),
    }


def summary_key(report: Report) -> tuple[Any, ...]:
    """What :func:`report_summary` follows from: equal keys, equal summaries."""
    checks = report.checks
    return (report.epoch, report.agent_version, report.interval, type(report.interval),
            tuple(checks), tuple(check_severity(name, fields) for name, fields in checks.items()))


def field_text(value: Any) -> str | None:
    """The stored text of one check field, as :func:`flatten_checks` writes it;
    None for a list field, which the host hash leaves out."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, int):
        return str(value)
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        return None
    return str(value)


def session_text(info: SessionInfo) -> str:
    """The JSON text stored per session in the host's sessions hash."""
    return session_fields_text(info.client_id, info.user_id, info.state, info.connected_at)


def session_fields_text(client_id: str, user_id: str | None, state: str,
                        connected_at: float) -> str:
    """:func:`session_text` of a session given by its fields."""
    return _SESSION_JSON.encode({
        "client_id": client_id,
        "user_id": user_id,
        "state": state,
        "connected_at": iso_from_seconds(connected_at),
    })


# How session texts are written: keys sorted, text as it is (not \u-escaped).
_SESSION_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True)


def parse_value(text: str) -> FieldValue:
    """Best-effort inverse of :func:`format_value` for scalar fields."""
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


@dataclass(frozen=True)
class HostState:
    """A host's stored state, decoded for readers."""

    host: str
    status: Status
    last_seen_ms: int
    stale: str
    clock_skew_s: float | None
    agent_version: str
    checks: dict[str, dict[str, FieldValue]]
    raw: dict[str, str]

    def check_fields(self, name: str) -> dict[str, FieldValue]:
        """Fields of one check, or {} when the host did not report it."""
        return self.checks.get(name, {})


def parse_host_state(host: str, raw: Mapping[Any, Any]) -> HostState:
    """Decode a host hash as returned by HGETALL (bytes or text)."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    checks: dict[str, dict[str, FieldValue]] = {}
    for key, value in fields.items():
        if key in META_FIELDS or "." not in key:
            continue
        name, _, field_name = key.partition(".")
        checks.setdefault(name, {})[field_name] = parse_value(value)
    for name, check in checks.items():
        # Every unhealthy check shows its severity, rated by the agent or,
        # for an older agent's report, by the same policy here, so that
        # alert rules can test ``telnet.severity == critical``.
        if check.get("healthy") is False and not check.get(SEVERITY_FIELD):
            check[SEVERITY_FIELD] = check_severity(name, check).name.lower()
    skew = parse_value(fields.get("clock_skew_s", ""))
    last_seen = fields.get("last_seen_ms", "0")
    return HostState(
        host=host,
        status=Status.parse(fields.get("status", "UNKNOWN")),
        last_seen_ms=int(last_seen) if last_seen.isdigit() else 0,
        stale=fields.get("stale", STALE_NO),
        clock_skew_s=float(skew) if isinstance(skew, int | float) and not isinstance(skew, bool)
        else None,
        agent_version=fields.get("agent_version", ""),
        checks=checks,
        raw=fields,
    )
