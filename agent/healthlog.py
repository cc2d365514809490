"""What the agent daemon logs about the host's health: changes, not cycles.

A sysop reads the agent's log in the journal. A line every interval saying
that all is well buries the lines that matter, and a full report every
interval while a disk stays full buries them too. :class:`HealthLog`
therefore remembers each check's last state and logs one line when a check
changes: it turns unhealthy, it recovers, or the reason it is unhealthy
changes. The first report of a run is summed up once, and the line of a
recovery that leaves every check healthy says so. Every report, changed or
not, is logged in full at DEBUG.

A state is the check's ``healthy`` flag plus, while unhealthy, the reason
with its figures taken out: a disk that goes from 92.5 % to 92.6 % used, or
a banner that comes after 2400 ms instead of 2500 ms, has not changed state.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wire.messages import FieldValue
from wire.state import check_severity
from wire.status import Status

logger = logging.getLogger(__name__)

# The entry the daemon adds when the check runner itself failed; a report
# without it means the checks ran again.
AGENT = "agent"

_FIGURES = re.compile(r"\d+(?:\.\d+)?")
_DETAIL_LIMIT = 200


def _short(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return f"[{len(value)} items]"
    return value


def loggable(checks: Mapping[str, Mapping[str, FieldValue]]) -> dict[str, dict[str, Any]]:
    """The report for a log line: lists (the sessions) shown by their length."""
    return {name: {k: _short(v) for k, v in fields.items()} for name, fields in checks.items()}


def _number(value: FieldValue) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _fmt(value: FieldValue) -> str:
    """A figure as a person writes it (92.5, 90, 612); anything else as text."""
    number = _number(value)
    return f"{number:g}" if number is not None else str(value)


def _over(value: FieldValue, limit: FieldValue, *, at_limit: bool = True) -> bool:
    """True when ``value`` breaks ``limit`` (reaching it counts when ``at_limit``)."""
    shown, most = _number(value), _number(limit)
    if shown is None or most is None:
        return False
    return shown >= most if at_limit else shown > most


def _measure(value: FieldValue, unit: str, limit: FieldValue, limit_unit: str,
             what: str = "") -> str:
    """``92.5% used, limit 90%``: a figure and, when there is one, its limit."""
    text = f"{what}{_fmt(value)}{unit}"
    if _number(limit) is not None:
        text += f", limit {_fmt(limit)}{limit_unit}"
    return text


def _figures(name: str, fields: Mapping[str, FieldValue]) -> list[str]:
    """The figures that explain a check's health; for an unhealthy one, those over a limit."""
    healthy = bool(fields.get("healthy"))
    get = fields.get
    if name == "disk_space" and _number(get("percent_used")) is not None:
        return [_measure(get("percent_used"), "% used", get("warning_threshold"), "%")]
    if name == "memory":
        parts = []
        rss, rss_limit = get("process_rss_mb"), get("warning_threshold_process_mb")
        if _number(rss) is not None and (healthy or _over(rss, rss_limit)):
            parts.append(_measure(rss, " MB", rss_limit, " MB", "BBS process RSS "))
        system, system_limit = get("system_percent"), get("warning_threshold_system_percent")
        if _number(system) is not None and (healthy or _over(system, system_limit)):
            parts.append(_measure(system, "% used", system_limit, "%", "system memory "))
        return parts
    if name == "sessions" and _number(get("active_sessions")) is not None:
        parts = []
        active, most = get("active_sessions"), get("max_sessions")
        if healthy or _over(active, most, at_limit=False):
            parts.append(_measure(active, " active sessions", most, ""))
        top, most_per_ip = get("top_ip_sessions"), get("max_same_ip")
        if not healthy and _over(top, most_per_ip, at_limit=False):
            parts.append(_measure(top, f" sessions from {get('top_ip')}", most_per_ip, ""))
        return parts
    if name == "database":
        integrity = get("integrity")
        if not healthy and integrity not in (None, "ok", "not checked"):
            return [f"integrity: {integrity}"]
        return [f"integrity {integrity}"] if healthy and integrity is not None else []
    if name == "telnet" and healthy and _number(get("banner_ms")) is not None:
        return [_measure(get("banner_ms"), " ms", get("threshold_ms"), " ms",
                         "banner after ")]
    return []


def detail(name: str, fields: Mapping[str, FieldValue]) -> str:
    """A short reason for a check's state: its error, else the figures that matter."""
    error = fields.get("error")
    if isinstance(error, str) and error and not fields.get("healthy"):
        text = error.splitlines()[0] if error.splitlines() else error
    else:
        text = "; ".join(_figures(name, fields))
    return text[:_DETAIL_LIMIT]


@dataclass(frozen=True)
class CheckState:
    """One check's state as far as the log is concerned."""

    healthy: bool
    reason: str  # the unhealthy detail without its figures; empty when healthy
    shown: str = field(default="", compare=False)  # the detail as last seen

    @classmethod
    def of(cls, name: str, fields: Mapping[str, FieldValue]) -> CheckState:
        healthy = bool(fields.get("healthy"))
        shown = detail(name, fields)
        return cls(healthy, "" if healthy else _FIGURES.sub("#", shown), shown)


def _described(word: str, text: str) -> str:
    return f"{word} ({text})" if text else word


def duration_text(seconds: float) -> str:
    """``45 s``, ``3 min 10 s``, ``2 h 14 min``: a length of time for a log line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _level(name: str, fields: Mapping[str, FieldValue]) -> int:
    unhealthy = {**fields, "healthy": False}
    return logging.ERROR if check_severity(name, unhealthy) is Status.CRITICAL else logging.WARNING


class HealthLog:
    """Logs the changes between one report's checks and the next's."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.states: dict[str, CheckState] = {}
        self._unhealthy_since: float | None = None
        self._started = False

    def _all_healthy(self) -> bool:
        return all(state.healthy for state in self.states.values())

    def update(self, checks: Mapping[str, Mapping[str, FieldValue]]) -> None:
        """Log what changed since the previous report; the whole report at DEBUG."""
        checks = dict(checks)
        if AGENT not in checks and AGENT in self.states:
            # The checks ran again: the failure of the runner is over.
            checks[AGENT] = {"healthy": True}
        lines = self._first(checks) if not self._started else self._changes(checks)
        self._started = True
        if self._unhealthy_since is None and not self._all_healthy():
            self._unhealthy_since = self.clock()
        elif self._unhealthy_since is not None and self._all_healthy():
            if lines:
                level, text = lines[-1]
                lines[-1] = (level, f"{text}; all checks healthy again after "
                                    f"{duration_text(self.clock() - self._unhealthy_since)}")
            self._unhealthy_since = None
        for level, text in lines:
            logger.log(level, "%s", text)
        logger.debug("Full health report: %s", loggable(checks))

    def _first(self, checks: Mapping[str, Mapping[str, FieldValue]]) -> list[tuple[int, str]]:
        self.states = {name: CheckState.of(name, fields) for name, fields in checks.items()}
        if self._all_healthy():
            return [(logging.INFO, f"Health: all {len(checks)} checks healthy "
                                   f"({', '.join(checks)})")]
        return [(_level(name, fields), f"{name}: {_described('unhealthy', detail(name, fields))}")
                for name, fields in checks.items() if not self.states[name].healthy]

    def _changes(self, checks: Mapping[str, Mapping[str, FieldValue]]) -> list[tuple[int, str]]:
        lines: list[tuple[int, str]] = []
        for name, fields in checks.items():
            now = CheckState.of(name, fields)
            before = self.states.get(name)
            self.states[name] = now
            if before == now or (before is None and now.healthy):
                continue
            text = now.shown
            if before is None:
                lines.append((_level(name, fields), f"{name}: {_described('unhealthy', text)}"))
            elif now.healthy:
                lines.append((logging.INFO, f"{name}: unhealthy -> "
                                            f"{_described('healthy', text)}"))
            elif before.healthy:
                lines.append((_level(name, fields), f"{name}: healthy -> "
                                            f"{_described('unhealthy', text)}"))
            else:
                lines.append((_level(name, fields), f"{name}: "
                                            f"{_described('unhealthy', before.shown)} -> "
                                            f"{_described('unhealthy', text)}"))
        return lines
