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
stopped sending heartbeats, or a running collector that says in its
heartbeat that it is behind, add WARNING: the state shown may be old, and
hosts turn stale soon after anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector.fleet import FleetView, HostView
from collector.nagios import NagiosRange, format_number, perfdata, range_status
from collector.selfmon import CollectorStats, CollectorView, total
from collector.settings import CollectorSettings
from wire.state import STALE_NO, iso_from_ms, plural, stale_status
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


def ago(seconds: float) -> str:
    """An age for people: ``45 s``, ``4 min``, ``3 h``, ``2 d``."""
    whole = max(0, int(round(seconds)))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86_400:
        return f"{whole // 3600} h"
    return f"{whole // 86_400} d"


def one_line(text: str) -> str:
    """Text for a plugin's first line: every line break and run of spaces
    folded into one space, and ``|`` (where perfdata would begin) shown as
    ``/``."""
    return " ".join(str(text).split()).replace("|", "/")


def shorten(text: str, limit: int = 120) -> str:
    """``text`` on one line, cut at ``limit`` characters with an ellipsis."""
    folded = one_line(text)
    return folded if len(folded) <= limit else folded[: limit - 1].rstrip() + "…"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _pct(value: Any) -> str:
    number = _number(value)
    return "unknown" if number is None else f"{format_number(number)}%"


def size_text(size_bytes: Any, size_mb: Any = None) -> str:
    """A file size for people: bytes, KB below a megabyte, MB above."""
    exact = _number(size_bytes)
    if exact is None:
        megabytes = _number(size_mb)
        if megabytes is None:
            return "unknown"
        exact = megabytes * 1024 * 1024
    if exact < 1024:
        return plural(int(exact), "byte")
    if exact < 1024 * 1024:
        return f"{format_number(round(exact / 1024, 1))} KB"
    return f"{format_number(round(exact / (1024 * 1024), 2))} MB"


def integrity_text(fields: dict[str, Any], host_age_s: float = 0.0) -> str:
    """``integrity ok, checked 4 min ago``: the result and how old it is
    (its age when reported plus the time since the report)."""
    integrity = fields.get("integrity")
    if not isinstance(integrity, str) or not integrity:
        return "integrity not checked"
    text = f"integrity {shorten(integrity, 80)}"
    age = _number(fields.get("integrity_age_s"))
    if age is not None:
        text += f", checked {ago(age + host_age_s)} ago"
    return text


def _error(fields: dict[str, Any]) -> str:
    error = fields.get("error")
    return shorten(error) if isinstance(error, str) and error else ""


def describe_check(name: str, fields: dict[str, Any], host_age_s: float = 0.0,
                   with_error: bool = True) -> str:
    """One line of figures for a check, the way the seed's verbose mode shows
    them (``with_error`` False leaves out an error already shown)."""

    def get(key: str) -> Any:
        return fields.get(key)

    parts: list[str] = []
    if name == "database":
        if get("integrity") is not None or get("healthy"):
            parts.append(integrity_text(fields, host_age_s))
        if get("size_bytes") is not None or get("size_mb") is not None:
            parts.append(f"size {size_text(get('size_bytes'), get('size_mb'))}")
        tables = _number(get("table_count"))
        if tables is not None:
            parts.append(plural(int(tables), "table"))
    elif name == "sessions":
        active = _number(get("active_sessions"))
        limits = []
        if _number(get("max_sessions")) is not None:
            limits.append(f"limit {format_number(get('max_sessions'))}")
        if _number(get("max_same_ip")) is not None:
            limits.append(f"{format_number(get('max_same_ip'))} per IP")
        if active is None:
            parts.append("sessions unknown")
        else:
            parts.append(f"{format_number(active)} active"
                         + (f" ({', '.join(limits)})" if limits else ""))
    elif name == "disk_space":
        parts.append(f"{_pct(get('percent_used'))} used")
        free, total_gb = _number(get("free_gb")), _number(get("total_gb"))
        if free is not None and total_gb is not None:
            parts[-1] += f", {format_number(free)} GB free of {format_number(total_gb)} GB"
    elif name == "memory":
        rss = _number(get("process_rss_mb"))
        parts.append("no BBS process" if rss is None else f"process RSS {format_number(rss)} MB")
        if _number(get("system_percent")) is not None:
            parts.append(f"system {_pct(get('system_percent'))}")
    elif name == "telnet":
        banner = _number(get("banner_ms"))
        threshold = _number(get("threshold_ms"))
        if banner is None:
            parts.append("not answering")
        else:
            parts.append(f"banner after {format_number(banner)} ms"
                         + ("" if threshold is None
                            else f" (threshold {format_number(threshold)} ms)"))
    elif name == "uptime":
        up = _number(get("uptime_seconds"))
        if up is not None:
            parts.append(f"system up {ago(up)}")
        bbs_up = _number(get("bbs_uptime_seconds"))
        parts.append("BBS process not found" if bbs_up is None
                     else f"BBS pid {get('bbs_pid')} up {ago(bbs_up)}")
    else:
        parts.extend(f"{k}={shorten(str(v), 60)}" for k, v in sorted(fields.items())
                     if k not in ("healthy", "error", "severity") and v is not None and v != "")
        parts = parts[:6]
    text = ", ".join(parts) if parts else ("healthy" if get("healthy") else "unhealthy")
    error = _error(fields) if with_error else ""
    return f"{text} (error: {error})" if error else text


def _problem(name: str, status: Status, view: HostView) -> str:
    """A check's problem for the summary line: what is wrong and which limit
    it broke."""
    fields = view.state.check_fields(name)
    error = _error(fields)
    if name == "disk_space":
        limit = _number(fields.get("warning_threshold"))
        return (f"disk_space {status.name} ({_pct(fields.get('percent_used'))} used"
                + ("" if limit is None else f", limit {format_number(limit)}%") + ")")
    if name == "memory":
        rss = _number(fields.get("process_rss_mb"))
        if rss is None:
            return f"memory {status.name} (no BBS process{': ' + error if error else ''})"
        rss_limit = _number(fields.get("warning_threshold_process_mb"))
        system = _number(fields.get("system_percent"))
        system_limit = _number(fields.get("warning_threshold_system_percent"))
        if system is not None and system_limit is not None and system >= system_limit \
                and not (rss_limit is not None and rss >= rss_limit):
            return (f"memory {status.name} (system {format_number(system)}%, limit "
                    f"{format_number(system_limit)}%)")
        return (f"memory {status.name} (RSS {format_number(rss)} MB"
                + ("" if rss_limit is None else f", limit {format_number(rss_limit)} MB")
                + ")")
    if name == "database":
        return f"database {status.name} ({error or integrity_text(fields, view.age_s)})"
    if name == "sessions":
        active = _number(fields.get("active_sessions"))
        limit = _number(fields.get("max_sessions"))
        top = _number(fields.get("top_ip_sessions"))
        same = _number(fields.get("max_same_ip"))
        if top is not None and same is not None and top > same:
            return (f"sessions {status.name} ({format_number(top)} from {fields.get('top_ip')},"
                    f" per-IP limit {format_number(same)})")
        if active is not None and limit is not None and active > limit:
            return (f"sessions {status.name} ({format_number(active)} active, total limit "
                    f"{format_number(limit)})")
        return f"sessions {status.name}" + (f" ({error})" if error else "")
    if name == "telnet":
        banner = _number(fields.get("banner_ms"))
        if banner is None:
            return f"telnet {status.name} (not answering{': ' + error if error else ''})"
        threshold = _number(fields.get("threshold_ms"))
        return (f"telnet {status.name} (banner after {format_number(banner)} ms"
                + ("" if threshold is None else f", threshold {format_number(threshold)} ms")
                + ")")
    return f"{name} {status.name}" + (f" ({error})" if error else "")


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


def behind(stats: CollectorStats, settings: CollectorSettings) -> bool:
    """True when a running collector's heartbeat says it is behind: the
    entries of its last round were older than ``stall_after_s`` while more
    waited, or it has held an entry longer than a claim of the older entry
    it waits for should take."""
    return stats.lag_s > settings.stall_after_s or stats.oldest_pending_s > max(
        settings.stall_after_s, settings.claim_min_idle_s * 2)


def describe_behind(stats: CollectorStats) -> str:
    """How far one collector is behind, from its heartbeat's figures."""
    parts = []
    if stats.lag:
        entries = "entry" if stats.lag == 1 else "entries"
        parts.append(f"read {stats.lag} {entries} up to {format_number(round(stats.lag_s))} s "
                     "old with more waiting")
    parts.append(f"{stats.pending} pending")
    if stats.oldest_pending_s:
        parts.append(f"one held {format_number(round(stats.oldest_pending_s))} s for an "
                     "older entry of its stream")
    return f"{stats.collector}: {'; '.join(parts)}"


def judge_collectors(fleet: FleetView, settings: CollectorSettings) -> tuple[Status, list[str]]:
    """WARNING when no collector is alive or a running one is behind; with reasons."""
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
    late = sorted((stats for stats in fleet.running if behind(stats, settings)),
                  key=lambda stats: (-max(stats.lag_s, stats.oldest_pending_s), stats.collector))
    if late:
        more = f"; and {plural(len(late) - 1, 'other collector')}" if len(late) > 1 else ""
        problems.append(f"collector behind ({describe_behind(late[0])}{more})")
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
        """``MTBBS <STATE> - summary | perfdata``, always one line."""
        line = f"MTBBS {self.status.name} - {one_line(self.summary)}"
        return f"{line} | {' '.join(self.perf)}" if self.perf else line

    def text(self, verbose: bool) -> str:
        """The plugin output, with long output lines when ``verbose``."""
        lines = [self.first_line()]
        if verbose:
            # A long output line must not look like perfdata either.
            lines.extend(line.replace("|", "/") for line in self.long)
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


def _host_long(verdict: HostVerdict, named: bool = True) -> list[str]:
    """A host's long output lines. When the summary ``named`` the host, its
    problems' errors are there already and are not repeated here."""
    view = verdict.view
    skew = view.state.clock_skew_s
    head = (f"{view.host}: {verdict.status.name} - last seen {ago(view.age_s)} ago (reports "
            f"every {ago(view.interval_s)}, stale {view.stale})")
    if view.sessions is not None:
        head += f", {plural(view.sessions, 'session')}"
    if skew is not None:
        head += f", clock skew {format_number(skew)} s"
    lines = [head]
    for name, fields in sorted(view.state.checks.items()):
        status = verdict.checks.get(name, Status.UNKNOWN)
        repeat = not (named and status != Status.OK)
        lines.append(f"  {name}: {status.name} - "
                     f"{describe_check(name, fields, view.age_s, with_error=repeat)}")
    return lines


def _sharing(collector: CollectorView) -> str | None:
    """Which host streams a running collector reads and with how many
    collectors it shares the hosts, as its heartbeat says (None without)."""
    if collector.stopped or "streams" not in collector.fields:
        return None
    streams = int(collector.number("streams"))
    known = int(collector.number("streams_known"))
    sharing = int(collector.number("collectors"))
    return (f"reads {streams} of {plural(known, 'host stream')}, "
            f"{plural(sharing, 'collector')} sharing the hosts")


def _collector_long(fleet: FleetView, settings: CollectorSettings) -> list[str]:
    lines = []
    running = {stats.collector: stats for stats in fleet.running}
    for collector in fleet.collectors:
        # A collector that said it stopped is stopped, not stalled.
        stalled = not collector.stopped and collector not in alive_collectors([collector],
                                                                                 settings)
        figures = [f"heartbeat {ago(collector.age_s)} ago"]
        for key, word in (("processed", "processed"), ("dead_lettered", "dead-lettered")):
            if collector.fields.get(key) not in (None, ""):
                figures.append(f"{word} {collector.fields[key]}")
        sharing = _sharing(collector)
        if sharing:
            figures.append(sharing)
        stats = running.get(collector.name)
        if stats is not None:
            figures.append(f"lag {stats.lag} (oldest {format_number(stats.lag_s)} s), "
                           f"{stats.pending} pending (oldest held "
                           f"{format_number(stats.oldest_pending_s)} s)")
        lines.append(f"collector {collector.name}: {collector.fields.get('state') or 'running'}"
                     f"{' (stalled)' if stalled else ''}, {', '.join(figures)}")
    # The running collectors' own figures, summed: each reads hosts of its own.
    sums = total(fleet.running)
    lines.append(f"running collectors: {len(fleet.running)}, lag {int(sums['lag'])} (oldest "
                 f"{format_number(sums['lag_s'])} s), {int(sums['pending'])} pending (oldest "
                 f"held {format_number(sums['oldest_pending_s'])} s), "
                 f"{plural(fleet.dead_letters, 'dead letter')}")
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
        if fleet.missing:
            return unknown(f"host {fleet.missing[0]} has never reported (no state in Redis)")
        return unknown("the host has never reported (no state in Redis)")
    verdict = judge_host(fleet.hosts[0], thresholds, settings)
    view = verdict.view
    collector_status, collector_problems = judge_collectors(fleet, settings)
    status = Status.worst([verdict.status, collector_status])
    figures = []
    if view.sessions is not None:
        figures.append(plural(view.sessions, "session"))
    disk = view.figure("disk_space", "percent_used")
    if disk is not None:
        figures.append(f"disk {format_number(disk)}%")
    rss = view.figure("memory", "process_rss_mb")
    if rss is not None:
        figures.append(f"RSS {format_number(rss)} MB")
    figures.append(f"seen {ago(view.age_s)} ago")
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


def fleet_result(fleet: FleetView, thresholds: Thresholds, settings: CollectorSettings,
                 detail: bool = True) -> CheckResult:
    """The check of every host in the index; without ``detail``, the long
    output and the JSON document leave out the hosts (a line or an object
    per host, which a big fleet's status line does not need to wait for)."""
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
    summary = f"{plural(len(verdicts), 'host')}: " + ", ".join(
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
    sums = total(fleet.running)
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
    named_hosts = {v.view.host for v in bad[:MAX_NAMED_PROBLEMS]}
    by_host = sorted(verdicts, key=lambda v: v.view.host) if detail else []
    long: list[str] = []
    for verdict in by_host:
        long.extend(_host_long(verdict, verdict.view.host in named_hosts))
    long.extend(_collector_long(fleet, settings))
    doc = {"timestamp": iso_from_ms(fleet.now_ms),
           "counts": {s.name: counts[s] for s in Status},
           "hosts": [_host_doc(v) for v in by_host],
           "collectors": [_collector_doc(c, settings) for c in fleet.collectors],
           "collector_problems": collector_problems}
    return CheckResult(status, summary, perf, long, doc)
