"""The Nagios/Icinga check: the fleet's (or one host's) state as a plugin result.

Measure, evaluate, present, apart: :mod:`collector.fleet` reads the state,
the ``judge_*`` functions here turn it into states with reasons (pure
functions of their inputs), and :class:`CheckResult` formats the plugin
output: ``MTBBS <STATE> - summary | perfdata``, long output lines for
``-v``, or a JSON document.

How a host's state is judged: every check reported by its agent counts
under the seed's rules (``database`` unhealthy is CRITICAL, any other check
unhealthy is WARNING); staleness adds WARNING or CRITICAL; ``-w``/``-c``
replace the agent's own verdict for the check of the chosen metric with the
Nagios ranges. The fleet's state is the worst host's. Collectors that all
stopped sending heartbeats (or lag behind) add WARNING: the state shown may
be old, and hosts turn stale soon after anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector.fleet import FleetView, HostView
from collector.nagios import NagiosRange, format_number, perfdata, range_status
from collector.selfmon import CollectorView, total
from collector.settings import CollectorSettings
from wire.state import STALE_NO, iso_from_ms, stale_status
from wire.status import Status

MAX_NAMED_PROBLEMS = 5
AGE = "age"


@dataclass(frozen=True)
class Metric:
    """A figure ``-w``/``-c`` can apply to."""

    name: str
    check: str  # the check whose verdict the ranges replace ("" for staleness)
    uom: str
    minimum: float | None
    maximum: float | None
    value: Callable[[HostView], float | None]
    default_warning: Callable[[HostView], float | None] = lambda view: None


def _sessions(view: HostView) -> float | None:
    return None if view.sessions is None else float(view.sessions)


METRICS: dict[str, Metric] = {
    "disk_percent": Metric("disk_percent", "disk_space", "%", 0, 100,
                           lambda v: v.figure("disk_space", "percent_used"),
                           lambda v: v.figure("disk_space", "warning_threshold")),
    "memory_mb": Metric("memory_mb", "memory", "MB", 0, None,
                        lambda v: v.figure("memory", "process_rss_mb"),
                        lambda v: v.figure("memory", "warning_threshold_process_mb")),
    "sessions": Metric("sessions", "sessions", "", 0, None, _sessions,
                       lambda v: v.figure("sessions", "max_sessions")),
    AGE: Metric(AGE, "", "s", 0, None, lambda v: v.age_s),
}


@dataclass(frozen=True)
class Thresholds:
    """``-w``/``-c`` for one metric (either may be absent)."""

    metric: str = "disk_percent"
    warning: NagiosRange | None = None
    critical: NagiosRange | None = None

    @property
    def active(self) -> bool:
        """True when either range was given."""
        return self.warning is not None or self.critical is not None


@dataclass
class HostVerdict:
    """A host's state with the reasons for it."""

    view: HostView
    status: Status
    checks: dict[str, Status]
    stale: Status
    problems: list[str] = field(default_factory=list)


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{format_number(value)}%"


def describe_check(name: str, fields: dict[str, Any]) -> str:
    """One line of figures for a check, the way the seed's verbose mode shows them."""

    def get(key: str) -> Any:
        return fields.get(key)

    def mb(value: Any) -> str:
        return "?" if value is None else f"{format_number(float(value))} MB"

    error = f" (error: {get('error')})" if get("error") else ""
    if name == "database":
        return (f"integrity {get('integrity') or '?'}, size {mb(get('size_mb'))}, "
                f"{get('table_count') if get('table_count') is not None else '?'} tables{error}")
    if name == "sessions":
        return f"{get('active_sessions') if get('active_sessions') is not None else '?'} " \
               f"active (limit {get('max_sessions') or '?'}){error}"
    if name == "disk_space":
        return (f"{_pct(get('percent_used'))} used, {get('free_gb')} GB free of "
                f"{get('total_gb')} GB{error}")
    if name == "memory":
        return (f"process RSS {mb(get('process_rss_mb'))}, system "
                f"{_pct(get('system_percent'))}{error}")
    shown = [f"{k}={v}" for k, v in sorted(fields.items()) if k != "healthy"][:6]
    return ", ".join(shown) + error


def _problem(name: str, status: Status, view: HostView) -> str:
    fields = view.state.check_fields(name)
    if name == "disk_space":
        return f"disk_space {status.name} ({_pct(view.figure('disk_space', 'percent_used'))} used)"
    if name == "memory":
        rss = view.figure("memory", "process_rss_mb")
        return f"memory {status.name} (RSS {'?' if rss is None else format_number(rss)} MB)"
    if name == "database":
        detail = fields.get("error") or f"integrity {fields.get('integrity') or '?'}"
        return f"database {status.name} ({detail})"
    if name == "sessions":
        return f"sessions {status.name} ({fields.get('active_sessions')} active)"
    return f"{name} {status.name}"


def judge_host(view: HostView, thresholds: Thresholds, settings: CollectorSettings) -> HostVerdict:
    """A host's state: its checks, the ranges when given, and staleness."""
    checks = view.check_statuses()
    metric = METRICS[thresholds.metric]
    problems: list[str] = []
    if thresholds.active and metric.check:
        value = metric.value(view)
        judged = range_status(value, thresholds.warning, thresholds.critical)
        checks[metric.check] = judged
        if judged != Status.OK:
            shown = "no value" if value is None else f"{format_number(value)}{metric.uom}"
            problems.append(f"{metric.name} {judged.name} ({shown})")
    for name, status in checks.items():
        if status != Status.OK and not (thresholds.active and name == metric.check):
            problems.append(_problem(name, status, view))
    if thresholds.active and metric.name == AGE:
        stale = range_status(view.age_s, thresholds.warning, thresholds.critical)
    else:
        stale = stale_status(view.stale)
    if stale != Status.OK:
        problems.append(f"stale {stale.name} (silent {format_number(round(view.age_s))} s, "
                        f"reports every {format_number(view.interval_s)} s)")
    return HostVerdict(view, Status.worst([*checks.values(), stale]), checks, stale, problems)


def alive_collectors(collectors: list[CollectorView], settings: CollectorSettings
                     ) -> list[CollectorView]:
    """Collectors with a recent heartbeat that did not stop."""
    return [c for c in collectors if c.age_s <= settings.stall_after_s and not c.stopped]


def judge_collectors(fleet: FleetView, settings: CollectorSettings) -> tuple[Status, list[str]]:
    """WARNING when no collector is alive or the group lags behind; with reasons."""
    problems: list[str] = []
    if not fleet.collectors:
        problems.append("no collector has ever sent a heartbeat")
    elif not alive_collectors(fleet.collectors, settings):
        newest = fleet.collectors[0]
        if newest.stopped:
            problems.append(f"no collector running ({newest.name} stopped "
                            f"{format_number(round(newest.age_s))} s ago)")
        else:
            problems.append(f"collector stalled (newest heartbeat "
                            f"{format_number(round(newest.age_s))} s ago, from {newest.name})")
    sums = total(fleet.groups)
    if sums["lag_s"] > settings.stall_after_s or sums["oldest_pending_s"] > max(
            settings.stall_after_s, settings.claim_min_idle_s * 2):
        problems.append(f"collector behind ({int(sums['lag'])} undelivered, oldest "
                        f"{format_number(round(sums['lag_s']))} s; {int(sums['pending'])} "
                        "pending)")
    return (Status.WARNING if problems else Status.OK), problems


@dataclass
class CheckResult:
    """A plugin result: state, summary, perfdata, long output and a JSON document."""

    status: Status
    summary: str
    perf: list[str] = field(default_factory=list)
    long: list[str] = field(default_factory=list)
    doc: dict[str, Any] = field(default_factory=dict)

    def first_line(self) -> str:
        """``MTBBS <STATE> - summary | perfdata``."""
        line = f"MTBBS {self.status.name} - {self.summary}"
        return f"{line} | {' '.join(self.perf)}" if self.perf else line

    def text(self, verbose: bool) -> str:
        """The plugin output, with long output lines when ``verbose``."""
        lines = [self.first_line()]
        if verbose:
            lines.extend(self.long)
        return "\n".join(lines)

    def document(self) -> dict[str, Any]:
        """The ``--json`` document (``status`` and ``exit_code`` as the seed's)."""
        return {"status": self.status.name, "exit_code": int(self.status),
                "summary": self.summary, "perfdata": " ".join(self.perf), **self.doc}


def unknown(summary: str) -> CheckResult:
    """An UNKNOWN result (Redis unreachable, unknown host, timeout, bad input)."""
    return CheckResult(Status.UNKNOWN, summary)


def _host_doc(verdict: HostVerdict) -> dict[str, Any]:
    view = verdict.view
    return {
        "host": view.host,
        "status": verdict.status.name,
        "stale": view.stale,
        "last_seen": iso_from_ms(view.state.last_seen_ms) if view.state.last_seen_ms else None,
        "last_seen_age_s": view.age_s,
        "interval_s": view.interval_s,
        "clock_skew_s": view.state.clock_skew_s,
        "agent_version": view.state.agent_version,
        "sessions": view.sessions,
        "problems": verdict.problems,
        "checks": {name: {"status": verdict.checks.get(name, Status.UNKNOWN).name, **fields}
                   for name, fields in sorted(view.state.checks.items())},
    }


def _collector_doc(collector: CollectorView, settings: CollectorSettings) -> dict[str, Any]:
    alive = collector in alive_collectors([collector], settings)
    return {"name": collector.name, "alive": alive, "heartbeat_age_s": round(collector.age_s, 3),
            **collector.fields}


def _host_long(verdict: HostVerdict) -> list[str]:
    view = verdict.view
    skew = view.state.clock_skew_s
    head = (f"{view.host}: {verdict.status.name} - last seen {format_number(round(view.age_s))}"
            f" s ago (reports every {format_number(view.interval_s)} s, stale {view.stale})")
    if view.sessions is not None:
        head += f", {view.sessions} session{'' if view.sessions == 1 else 's'}"
    if skew is not None:
        head += f", clock skew {format_number(skew)} s"
    lines = [head]
    for name, fields in sorted(view.state.checks.items()):
        status = verdict.checks.get(name, Status.UNKNOWN)
        lines.append(f"  {name}: {status.name} - {describe_check(name, fields)}")
    return lines


def _collector_long(fleet: FleetView, settings: CollectorSettings) -> list[str]:
    lines = []
    for collector in fleet.collectors:
        # A collector that said it stopped is stopped, not stalled.
        stalled = not collector.stopped and collector not in alive_collectors([collector],
                                                                                 settings)
        lines.append(
            f"collector {collector.name}: {collector.fields.get('state', '?')}"
            f"{' (stalled)' if stalled else ''}, heartbeat {format_number(round(collector.age_s))}"
            f" s ago, processed {collector.fields.get('processed', '?')}, dead letters "
            f"{collector.fields.get('dead_lettered', '?')}")
    sums = total(fleet.groups)
    lines.append(f"group: {int(sums['lag'])} undelivered (oldest "
                 f"{format_number(sums['lag_s'])} s), {int(sums['pending'])} pending (oldest "
                 f"{format_number(sums['oldest_pending_s'])} s), {fleet.dead_letters} dead "
                 "letters")
    return lines


def _stale_perf(view: HostView, settings: CollectorSettings, thresholds: Thresholds) -> str:
    if thresholds.active and thresholds.metric == AGE:
        warn = thresholds.warning.text if thresholds.warning else ""
        crit = thresholds.critical.text if thresholds.critical else ""
    else:
        warn = format_number(settings.stale_warning_intervals * view.interval_s)
        crit = format_number(settings.stale_critical_intervals * view.interval_s)
    return perfdata("last_seen_age", round(view.age_s, 3), "s", warn, crit, 0)


def _metric_perf(label: str, metric: Metric, value: float | None, default_warn: float | None,
                 thresholds: Thresholds) -> str | None:
    if value is None:
        return None
    warn = "" if default_warn is None else format_number(default_warn)
    crit = ""
    if thresholds.active and thresholds.metric == metric.name:
        warn = thresholds.warning.text if thresholds.warning else ""
        crit = thresholds.critical.text if thresholds.critical else ""
    return perfdata(label, value, metric.uom, warn, crit, metric.minimum, metric.maximum)


def host_result(fleet: FleetView, thresholds: Thresholds, settings: CollectorSettings
                ) -> CheckResult:
    """The check of the one host in ``fleet`` (``--host H``)."""
    if fleet.missing or not fleet.hosts:
        name = fleet.missing[0] if fleet.missing else "?"
        return unknown(f"host {name} has never reported (no state in Redis)")
    verdict = judge_host(fleet.hosts[0], thresholds, settings)
    view = verdict.view
    collector_status, collector_problems = judge_collectors(fleet, settings)
    status = Status.worst([verdict.status, collector_status])
    figures = []
    if view.sessions is not None:
        figures.append(f"{view.sessions} session{'' if view.sessions == 1 else 's'}")
    disk = view.figure("disk_space", "percent_used")
    if disk is not None:
        figures.append(f"disk {format_number(disk)}%")
    rss = view.figure("memory", "process_rss_mb")
    if rss is not None:
        figures.append(f"RSS {format_number(rss)} MB")
    figures.append(f"seen {format_number(round(view.age_s))} s ago")
    problems = verdict.problems + collector_problems
    summary = f"{view.host}: " + ("; ".join(problems) if problems else "all checks OK")
    summary += f" ({', '.join(figures)})"
    perf = [p for p in (
        _metric_perf("sessions", METRICS["sessions"], _sessions(view), None, thresholds),
        _metric_perf("disk_percent", METRICS["disk_percent"], disk,
                     METRICS["disk_percent"].default_warning(view), thresholds),
        _metric_perf("memory_rss", METRICS["memory_mb"], rss,
                     METRICS["memory_mb"].default_warning(view), thresholds),
        _stale_perf(view, settings, thresholds),
        None if view.state.clock_skew_s is None
        else perfdata("clock_skew", view.state.clock_skew_s, "s"),
    ) if p is not None]
    long = _host_long(verdict) + _collector_long(fleet, settings)
    doc = {"timestamp": iso_from_ms(fleet.now_ms), "hosts": [_host_doc(verdict)],
           "collectors": [_collector_doc(c, settings) for c in fleet.collectors],
           "collector_problems": collector_problems}
    return CheckResult(status, summary, perf, long, doc)


def fleet_result(fleet: FleetView, thresholds: Thresholds, settings: CollectorSettings
                 ) -> CheckResult:
    """The check of every host in the index."""
    collector_status, collector_problems = judge_collectors(fleet, settings)
    if not fleet.hosts:
        result = unknown("no host has reported yet" + (
            "; " + "; ".join(collector_problems) if collector_problems else ""))
        result.doc = {"timestamp": iso_from_ms(fleet.now_ms), "hosts": [],
                      "collectors": [_collector_doc(c, settings) for c in fleet.collectors],
                      "collector_problems": collector_problems}
        result.long = _collector_long(fleet, settings)
        return result
    verdicts = [judge_host(v, thresholds, settings) for v in fleet.hosts]
    counts = {s: sum(1 for v in verdicts if v.status == s) for s in Status}
    status = Status.worst([*(v.status for v in verdicts), collector_status])
    summary = f"{len(verdicts)} hosts: " + ", ".join(
        f"{counts[s]} {s.name}" for s in Status if counts[s] or s == Status.OK)
    bad = sorted((v for v in verdicts if v.status != Status.OK),
                 key=lambda v: (-int(v.status), v.view.host))
    named = [f"{v.view.host} {'; '.join(v.problems) or v.status.name}"
             for v in bad[:MAX_NAMED_PROBLEMS]]
    if len(bad) > MAX_NAMED_PROBLEMS:
        named.append(f"and {len(bad) - MAX_NAMED_PROBLEMS} more")
    if named:
        summary += " - " + ", ".join(named)
    if collector_problems:
        summary += "; " + "; ".join(collector_problems)
    stale = sum(1 for v in fleet.hosts if v.stale != STALE_NO)
    sessions = sum(v.sessions or 0 for v in fleet.hosts)
    metric = METRICS[thresholds.metric]
    values = [(metric.value(v), v) for v in fleet.hosts]
    known = [(value, v) for value, v in values if value is not None]
    sums = total(fleet.groups)
    alive = alive_collectors(fleet.collectors, settings)
    perf = [
        perfdata("hosts", len(verdicts), "", "", "", 0),
        *(perfdata(f"hosts_{s.name.lower()}", counts[s], "", "", "", 0) for s in Status),
        perfdata("hosts_stale", stale, "", "", "", 0),
        perfdata("sessions", sessions, "", "", "", 0),
    ]
    if known:
        top, top_view = max(known, key=lambda item: item[0])
        line = _metric_perf(f"{metric.name}_max", metric, top, metric.default_warning(top_view)
                            if metric.name != AGE else None, thresholds)
        if line:
            perf.append(line)
    perf += [
        perfdata("collector_lag", sums["lag"], "", "", "", 0),
        perfdata("collector_pending", sums["pending"], "", "", "", 0),
        perfdata("collectors_alive", len(alive), "", "", "", 0),
        perfdata("dead_letters", fleet.dead_letters, "", "", "", 0),
    ]
    long: list[str] = []
    for verdict in sorted(verdicts, key=lambda v: v.view.host):
        long.extend(_host_long(verdict))
    long.extend(_collector_long(fleet, settings))
    doc = {"timestamp": iso_from_ms(fleet.now_ms),
           "counts": {s.name: counts[s] for s in Status},
           "hosts": [_host_doc(v) for v in sorted(verdicts, key=lambda v: v.view.host)],
           "collectors": [_collector_doc(c, settings) for c in fleet.collectors],
           "collector_problems": collector_problems}
    return CheckResult(status, summary, perf, long, doc)
