"""The per-host state as plain text, and how check results map to statuses.

The collector writes a host's state into one Redis hash of text fields so
that ``redis-cli HGETALL mtbbs:host:bbs-01`` is readable by a person; the
status CLI, the exporter and the alerter read it back. Both directions live
here so that writer and readers agree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from wire.status import Status

if TYPE_CHECKING:  # types only: the health check needs no message codec
    from wire.messages import FieldValue, Report, SessionInfo

# The seed's exit codes, kept by the seed-compatible health check: a
# database problem is CRITICAL, anything else that is unhealthy (disk,
# memory, sessions, ...) is WARNING.
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
    "status", "last_seen", "last_seen_ms", "observed_at", "epoch", "seq", "agent_version",
    "clock_skew_s", "stale", "dropped_total", "checks", "unhealthy", "interval_s",
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
    """The worst status over a report's checks under the seed's exit-code rules."""
    return checks_status(unhealthy_checks(checks))


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


def severity_status(checks: Mapping[str, Mapping[str, Any]],
                    unhealthy: list[str] | None = None) -> Status:
    """The worst status over a report's checks under the fleet's severity
    policy; ``unhealthy`` (unhealthy_checks of ``checks``) when known."""
    names = unhealthy_checks(checks) if unhealthy is None else unhealthy
    if not names:
        return Status.OK
    return max(check_severity(name, checks[name]) for name in names)


def stale_status(stale: str) -> Status:
    """The status a staleness level imposes."""
    return {STALE_WARNING: Status.WARNING, STALE_CRITICAL: Status.CRITICAL}.get(stale, Status.OK)


# Formatting times is on the collector's hot path (several per entry) and
# strftime is slow: the text of each whole second is computed once and kept
# in a small cache, the milliseconds are appended. The result is exactly
# strftime's (tests/wire compares them).
_SECOND_CACHE_LIMIT = 4096
_second_texts: dict[int, str] = {}
# Years 1970..9999, where the cached form and strftime's agree.
_LAST_CACHED_SECOND = 253_402_300_799
# ".000Z" to ".999Z": the end of a text with milliseconds.
_MILLI_TEXTS = tuple(f".{milli:03d}Z" for milli in range(1000))


def _second_text(second: int) -> str:
    text = _second_texts.get(second)
    if text is None:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        if len(_second_texts) >= _SECOND_CACHE_LIMIT:
            _second_texts.clear()
        _second_texts[second] = text
    return text


def iso_from_ms(ms: int | float) -> str:
    """``2026-11-28T10:30:45Z`` (UTC, second precision) from unix milliseconds."""
    if type(ms) is int and 0 <= ms <= _LAST_CACHED_SECOND * 1000:
        second = ms // 1000
        return (_second_texts.get(second) or _second_text(second)) + "Z"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_from_seconds(seconds: float) -> str:
    """ISO text of unix seconds, with milliseconds, in UTC."""
    if type(seconds) is float and 0.0 <= seconds < _LAST_CACHED_SECOND:
        # The same rounding as datetime.fromtimestamp: to microseconds, half
        # to even, then truncated to milliseconds as the %f text was.
        fraction, whole = math.modf(seconds)
        micros = round(fraction * 1e6)
        second = int(whole)
        if micros >= 1_000_000:
            micros -= 1_000_000
            second += 1
        return (_second_texts.get(second) or _second_text(second)) + _MILLI_TEXTS[micros // 1000]
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def entry_id_ms(entry_id: bytes | str) -> int:
    """The Redis server time (ms) embedded in a stream entry id."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def float_text(value: float) -> str:
    """A float as stored text: rounded to 3 decimals, shortest form ('50.1',
    '2.0'); '' when not finite. Both zeros are '0.0', so that equal values
    always have equal texts."""
    return FLOAT_TEXTS.get(value) or new_float_text(value)


def new_float_text(value: float) -> str:
    """:func:`float_text` of a value not in FLOAT_TEXTS, kept there (up to
    _FLOAT_CACHE_LIMIT texts).

    Figures repeat across a fleet's reports (a percentage with one decimal
    has a thousand values): a lookup costs a fifth of formatting. Equal
    floats have equal texts, so the cache may answer for any of them. Hot
    loops look it up themselves (``FLOAT_TEXTS.get(value) or
    new_float_text(value)``), which spares them a call per figure. (A plain
    dict: indexing a dict subclass, as one with ``__missing__``, goes through
    a Python-level slot and costs twice a plain ``get``.)
    """
    text = format_float(value)
    if text:  # not inf or nan (nan would never be found again)
        if len(FLOAT_TEXTS) >= _FLOAT_CACHE_LIMIT:
            FLOAT_TEXTS.clear()
        FLOAT_TEXTS[value] = text
    return text


def format_float(value: float) -> str:
    """:func:`float_text` without its cache, for values that seldom repeat
    (a clock skew): they would only push the repeating ones out of it."""
    if -1e9 < value < 1e9:
        # Below 1e9 the value has at most 12 significant digits after
        # rounding, so '%.3f' without its trailing zeros is exactly
        # repr(round(value, 3)) (tests/wire compares them), at half the cost.
        text = ("%.3f" % value).rstrip("0")  # noqa: UP031 - the cheapest form
        if text[-1] == ".":
            text += "0"
        return "0.0" if text == "-0.0" else text
    if value - value != 0.0:  # inf or nan
        return ""
    return repr(round(value, 3))


_FLOAT_CACHE_LIMIT = 16384
FLOAT_TEXTS: dict[float, str] = {}


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
    _flatten_into(flat, checks)
    return flat


def _flatten_into(flat: dict[str, str], checks: Mapping[str, Mapping[str, Any]]) -> None:
    for name, fields in checks.items():
        prefix = f"{name}."
        for key, value in fields.items():
            text = field_text(value)
            if text is not None:
                flat[f"{prefix}{key}"] = text


def report_fields(report: Report, entry_ms: int, stale: str = STALE_NO) -> dict[str, str]:
    """The host hash written for ``report`` received at Redis time ``entry_ms``."""
    fields = report_meta(report, entry_ms, stale)
    _flatten_into(fields, report.checks)
    return fields


def report_meta(report: Report, entry_ms: int, stale: str = STALE_NO) -> dict[str, str]:
    """The fields of :func:`report_fields` that are not check results (see META_FIELDS
    less ``dropped_total``, which the collector keeps as a running sum)."""
    checks = report.checks
    unhealthy = unhealthy_checks(checks)
    status = severity_status(checks, unhealthy)
    if stale != STALE_NO:
        status = max(status, stale_status(stale))
    last_seen, last_seen_ms, observed_at, seq, clock_skew = report_moment_texts(report, entry_ms)
    # This runs for every report the collector takes in: the texts below are
    # format_value's, written out for the types a decoded report holds.
    interval = report.interval
    in_order = tuple(checks)
    names = _checks_texts.get(in_order)
    if names is None:
        names = ",".join(sorted(checks))
        if len(_checks_texts) >= _CHECKS_TEXTS_LIMIT:
            _checks_texts.clear()
        _checks_texts[in_order] = names
    return {
        "status": _STATUS_NAMES[status],
        "last_seen": last_seen,
        "last_seen_ms": last_seen_ms,
        "observed_at": observed_at,
        "epoch": str(report.epoch),
        "seq": seq,
        "agent_version": report.agent_version,
        "clock_skew_s": clock_skew,
        "stale": stale,
        "interval_s": float_text(interval) if type(interval) is float else format_value(interval),
        "checks": names,
        "unhealthy": unhealthy_text(unhealthy),
    }


def unhealthy_checks(checks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The names of the unhealthy ones of a report's ``checks``, in report
    order: a check is unhealthy iff not bool(healthy)."""
    return [name for name, fields in checks.items() if not fields.get("healthy")]


def checks_status(unhealthy: list[str]) -> Status:
    """The status the checks named ``unhealthy`` give under the seed's rules
    (check_status's rule, written out); the fleet rates them with
    :func:`severity_status`, which needs their fields."""
    if not unhealthy:
        return Status.OK
    if CRITICAL_CHECKS.isdisjoint(unhealthy):
        return Status.WARNING
    return Status.CRITICAL


def status_name(status: Status) -> str:
    """The stored text of a status."""
    return _STATUS_NAMES[status]


def unhealthy_text(unhealthy: list[str]) -> str:
    """The stored ``unhealthy`` field: the names, sorted, comma-separated."""
    return unhealthy[0] if len(unhealthy) == 1 else ",".join(sorted(unhealthy))


def report_moment_texts(report: Report, entry_ms: int) -> tuple[str, str, str, str, str]:
    """``last_seen``, ``last_seen_ms``, ``observed_at``, ``seq`` and
    ``clock_skew_s`` of :func:`report_meta`: the fields every report changes."""
    observed_at = report.observed_at
    return (iso_from_ms(entry_ms), str(entry_ms), iso_from_seconds(observed_at),
            str(report.seq), format_float(observed_at - entry_ms / 1000))


_STATUS_NAMES = {status: status.name for status in Status}
# The sorted check names of a report, by the names in report order: a host
# sends the same few checks every time.
_CHECKS_TEXTS_LIMIT = 256
_checks_texts: dict[tuple[str, ...], str] = {}


def field_text(value: Any) -> str | None:
    """The stored text of one check field, as :func:`flatten_checks` writes it;
    None for a list field, which the host hash leaves out."""
    kind = type(value)
    if kind is str:
        return value
    if kind is float:
        return float_text(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        return None
    return format_value(value)


_json_string = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


def session_text(info: SessionInfo) -> str:
    """The JSON text stored per session in the host's sessions hash."""
    return session_fields_text(info.client_id, info.user_id, info.state, info.connected_at)


def session_fields_text(client_id: str, user_id: str | None, state: str,
                        connected_at: float) -> str:
    """:func:`session_text` of a session given by its fields (no SessionInfo
    to build on the collector's hot path)."""
    if type(client_id) is str and type(state) is str and (user_id is None
                                                          or type(user_id) is str):
        # json.dumps(..., ensure_ascii=False, sort_keys=True) written out:
        # the same text, without building a dict and an encoder per call.
        return (f'{{"client_id": {_json_string(client_id)}, "connected_at": '
                f'{_json_string(iso_from_seconds(connected_at))}, "state": '
                f'{_json_string(state)}, "user_id": '
                f'{"null" if user_id is None else _json_string(user_id)}}}')
    return json.dumps(
        {
            "client_id": client_id,
            "user_id": user_id,
            "state": state,
            "connected_at": iso_from_seconds(connected_at),
        },
        ensure_ascii=False,
        sort_keys=True,
    )


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


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


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
