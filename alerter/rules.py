"""Alert rules: what counts as a problem, for which hosts, and who hears of it.

A rule names a check (its alert is kept per host and rule name) and holds
conditions over the host's stored state (``disk_space.percent_used >= 90``,
``stale == critical``). Any ``when`` condition breaching raises the rule's
``severity``; any ``critical_when`` condition raises CRITICAL. The seed's
thresholds are the built-in rules; a ``[rules]`` table (in the main
configuration, or in the file named by ``[alerter] rules_file``) changes
them, adds new ones, overrides them per host (glob patterns over host ids)
and routes notifications to channels by severity, host and check.

Everything is parsed and validated once, at start: an error names the rule
and the field (``rules.disk_space.when[0]: ...``). Evaluation is a pure
function of a rule and a :class:`wire.state.HostState`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerter.settings import CHANNELS
from alerter.text import format_duration, parse_duration
from wire.errors import ConfigError
from wire.keys import CHECK_NAME_PATTERN
from wire.state import META_FIELDS, HostState, format_value, parse_value
from wire.status import Status

# Levels are the project's one status scale (wire.status), as plain ints.
OK: int = Status.OK.value
WARNING: int = Status.WARNING.value
CRITICAL: int = Status.CRITICAL.value
SEVERITIES = {"warning": WARNING, "critical": CRITICAL}

RESERVED = frozenset({"defaults", "overrides", "routes"})
NOTIFICATION_KINDS = ("firing", "repeat", "resolved", "flapping", "flapping_stopped")

# The seed's troubleshooting section, one short hint per check.
HINTS = {
    "disk_space": (
        "Disk usage is at or above the threshold. Delete old backups "
        "(ls -lt backups/*.db, remove the oldest mtbbs_YYYYMMDD_HHMMSS.db), shorten "
        "RETENTION_DAYS in scripts/backup_database.sh, and check log rotation "
        "(sudo logrotate -f /etc/logrotate.d/mtbbs_backup)."
    ),
    "database": (
        "The database may be corrupt or missing. Stop the BBS (./stop.sh), run "
        "sqlite3 data/mtbbs.db \"PRAGMA integrity_check;\", restore the latest backup "
        "(cp backups/mtbbs_YYYYMMDD_HHMMSS.db data/mtbbs.db) if it is not ok, check again, "
        "then ./start.sh."
    ),
    "sessions": (
        "Unusually many sessions: clients not disconnected properly, or a flood. List them "
        "with mtbbs-health-check --verbose, restart the BBS to clear them "
        "(./stop.sh && ./start.sh), check the firewall (sudo iptables -L -n -v) and lower "
        "TELNET_MAX_CONNECTIONS if needed."
    ),
    "memory": (
        "The BBS process or the system uses too much memory. Look at the process (ps, top); "
        "restart the BBS if its RSS keeps growing (./stop.sh && ./start.sh). Without psutil "
        "there are no memory figures (pip install psutil)."
    ),
    "telnet": (
        "The telnet port does not answer like the BBS. Check that the server runs "
        "(ps aux | grep telnet_server), restart it (./stop.sh && ./start.sh) and check the "
        "firewall."
    ),
    "stale": (
        "No report from this host's agent. Is the agent running "
        "(systemctl status mtbbs-agent, or ps aux | grep mtbbs-agent)? Can the host reach "
        "Redis? Look at the agent's log and its spool directory."
    ),
}

# The seed's thresholds (health-check section), rated by the fleet's
# severity policy (wire.state.check_severity).
BUILTIN_RULES: dict[str, dict[str, Any]] = {
    "disk_space": {"when": ["disk_space.percent_used >= 90"], "severity": "warning"},
    # A BBS process that is not running is CRITICAL (its severity says so).
    "memory": {"when": ["memory.process_rss_mb >= 500", "memory.system_percent >= 90"],
               "critical_when": ["memory.severity == critical"], "severity": "warning"},
    # A database only locked by a busy writer is WARNING, anything else CRITICAL.
    "database": {"when": ["database.healthy == false"],
                 "critical_when": ["database.severity == critical"], "severity": "warning",
                 "missing": "breach"},
    "sessions": {"when": ["sessions.active_sessions > sessions.max_sessions",
                          "sessions.healthy == false"], "severity": "warning"},
    # A BBS that does not answer is CRITICAL, one that answers slowly WARNING.
    "telnet": {"when": ["telnet.healthy == false"],
               "critical_when": ["telnet.severity == critical"], "severity": "warning"},
    "stale": {"when": ["stale == warning"], "critical_when": ["stale == critical"],
              "severity": "warning"},
}

DEFAULTS: dict[str, Any] = {
    "for": 0.0,
    "repeat": 4 * 3600.0,
    "flap_window": 21,
    "flap_high": 20.0,
    "flap_low": 5.0,
    "notify_resolved": True,
    "missing": "ok",
    "severity": "warning",
    "hosts": ["*"],
    "enabled": True,
}

_FIELD = r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)?"
_CONDITION = re.compile(rf"^\s*({_FIELD})\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")
_FIELD_REF = re.compile(rf"^{_FIELD}$")
_BARE_WORD = re.compile(r"^[A-Za-z0-9_:+-][A-Za-z0-9_.:+-]*$")


# -- conditions ----------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """``field op value``; ``value`` may be another field (``ref``)."""

    text: str
    field: str
    op: str
    value: Any = None
    ref: str | None = None

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse ``disk_space.percent_used >= 90``; ValueError says what is wrong."""
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a text")
        match = _CONDITION.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a condition (FIELD OP VALUE, OP one of "
                             ">= > <= < == !=)")
        name, op, raw = match.groups()
        if "." not in name and name not in META_FIELDS:
            raise ValueError(f"{name!r} is neither check.field nor one of "
                             f"{', '.join(sorted(META_FIELDS))}")
        try:
            value, ref = _parse_operand(raw)
        except ValueError as exc:
            raise ValueError(f"{text.strip()!r}: {exc}") from None
        if op in (">", ">=", "<", "<=") and ref is None and not _is_number(value):
            raise ValueError(f"{text!r} compares with {op} but {raw!r} is not a number")
        return cls(text=text.strip(), field=name, op=op, value=value, ref=ref)

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields this condition reads."""
        return (self.field,) if self.ref is None else (self.field, self.ref)

    def test(self, state: HostState) -> tuple[bool, Any, Any]:
        """(breaches, observed value, compared value); a missing field never breaches."""
        observed = lookup(state, self.field)
        expected = lookup(state, self.ref) if self.ref is not None else self.value
        if observed is None or expected is None:
            return False, observed, expected
        return _compare(observed, self.op, expected), observed, expected


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_operand(raw: str) -> tuple[Any, str | None]:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1], None
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true", None
    try:
        return int(raw), None
    except ValueError:
        pass
    try:
        number = float(raw)
    except ValueError:
        pass
    else:
        if number == number and abs(number) != float("inf"):
            return number, None
    if _FIELD_REF.match(raw) and "." in raw:
        return None, raw
    if _BARE_WORD.match(raw):
        return raw, None
    raise ValueError(f"{raw!r} is not a value (a number, true/false, a word, a quoted text "
                     "or a check.field)")


def _compare(observed: Any, op: str, expected: Any) -> bool:
    if op in ("==", "!="):
        if isinstance(expected, bool) or isinstance(observed, bool):
            same = isinstance(observed, bool) and isinstance(expected, bool) and \
                observed == expected
        elif _is_number(observed) and _is_number(expected):
            same = float(observed) == float(expected)
        else:
            same = str(observed) == str(expected)
        return same if op == "==" else not same
    if not (_is_number(observed) and _is_number(expected)):
        return False
    a, b = float(observed), float(expected)
    return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]


def lookup(state: HostState, name: str | None) -> Any:
    """The typed value of ``check.field`` or of a meta field, None when absent."""
    if name is None:
        return None
    if "." in name:
        check, _, key = name.partition(".")
        return state.checks.get(check, {}).get(key)
    text = state.raw.get(name)
    if text is None or text == "":
        return None
    if name == "stale":
        return text
    return parse_value(text)


# -- rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One alert rule, after defaults and (for a host) overrides."""

    name: str
    when: tuple[Condition, ...]
    critical_when: tuple[Condition, ...] = ()
    severity: str = "warning"
    for_s: float = 0.0
    repeat_s: float = 4 * 3600.0
    missing: str = "ok"
    hosts: tuple[str, ...] = ("*",)
    enabled: bool = True
    hint: str = ""
    flap_window: int = 21
    flap_high: float = 20.0
    flap_low: float = 5.0
    notify_resolved: bool = True

    @property
    def level(self) -> int:
        """The level a ``when`` breach raises."""
        return SEVERITIES[self.severity]

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field the rule reads, in order, without repeats."""
        seen: dict[str, None] = {}
        for condition in (*self.when, *self.critical_when):
            for name in condition.fields:
                seen.setdefault(name, None)
        return tuple(seen)

    @property
    def reads_staleness(self) -> bool:
        """True for rules about staleness itself: they are not inhibited by it."""
        return "stale" in self.fields

    def applies_to(self, host: str) -> bool:
        """The rule is enabled and one of its host patterns matches ``host``."""
        return self.enabled and any(fnmatch.fnmatchcase(host, p) for p in self.hosts)

    def describe(self) -> str:
        """One line for ``rules check``."""
        parts = [" or ".join(c.text for c in self.when) or "(no condition)"]
        if self.critical_when:
            parts.append("critical if " + " or ".join(c.text for c in self.critical_when))
        parts.append(f"severity {self.severity}")
        parts.append(f"for {format_duration(self.for_s)}")
        parts.append(f"repeat {format_duration(self.repeat_s) if self.repeat_s else 'never'}")
        if self.hosts != ("*",):
            parts.append("hosts " + ",".join(self.hosts))
        if not self.enabled:
            parts.append("DISABLED")
        return f"{self.name}: " + "; ".join(parts)


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one rule on one host state (figures are collected only for notices)."""

    level: int
    summary: str
    missing: bool = False


def evaluate_rule(rule: Rule, state: HostState) -> Evaluation:
    """Judge ``state`` under ``rule``."""
    matched: list[str] = []
    level = OK
    present = False
    for conditions, cond_level in ((rule.critical_when, CRITICAL), (rule.when, rule.level)):
        for condition in conditions:
            breached, observed, expected = condition.test(state)
            if observed is not None:
                present = True
            if breached:
                level = max(level, cond_level)
                shown = condition.ref if condition.ref else _show(expected)
                if condition.ref:
                    shown = f"{condition.ref} ({_show(expected)})"
                matched.append(f"{condition.field} = {_show(observed)} ({condition.op} {shown})")
    if not present and rule.missing == "breach" and state.raw.get("checks") is not None:
        # Nothing to rate it by: missing data counts as the rule's worst.
        worst = CRITICAL if rule.critical_when else rule.level
        return Evaluation(level=worst, summary=f"no {rule.name} data in the host's report",
                          missing=True)
    if level == OK:
        return Evaluation(level=OK, summary="ok")
    return Evaluation(level=level, summary="; ".join(dict.fromkeys(matched)))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_value(value)
    return str(value)


def collect_figures(rule: Rule, state: HostState, limit: int = 24) -> dict[str, str]:
    """The fields of every check the rule reads (and ``last_seen`` for staleness).

    In a stable order that reads well: first the fields the rule's conditions
    name, in the rule's order, then the other fields of those checks by name
    (a host hash's own order is Redis's hash order, which varies).
    """
    figures: dict[str, str] = {}

    def add(name: str, value: Any) -> None:
        if len(figures) < limit and name not in figures:
            figures[name] = _show(value) if value is not None else ""

    checks: dict[str, None] = {}
    for name in rule.fields:
        if "." in name:
            check, _, key = name.partition(".")
            checks.setdefault(check, None)
            fields = state.checks.get(check, {})
            if key in fields:
                add(name, fields[key])
        elif name in state.raw:
            add(name, state.raw[name])
            if name == "stale" and "last_seen" in state.raw:
                add("last_seen", state.raw["last_seen"])
    for check in checks:
        fields = state.checks.get(check, {})
        for key in sorted(fields):
            add(f"{check}.{key}", fields[key])
    return figures


# -- routes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where notifications matching ``hosts``/``severity``/``checks``/``kinds`` go."""

    channels: tuple[str, ...]
    hosts: tuple[str, ...] = ("*",)
    severity: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    continue_: bool = False

    def matches(self, host: str, check: str, severity: str, kind: str) -> bool:
        """True when a notification of this shape takes this route."""
        return (any(fnmatch.fnmatchcase(host, p) for p in self.hosts)
                and (not self.severity or severity in self.severity)
                and (not self.checks or check in self.checks)
                and (not self.kinds or kind in self.kinds))


# -- the policy ---------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """Changes to rules for hosts matching ``hosts``."""

    hosts: tuple[str, ...]
    rules: tuple[str, ...]  # empty: every rule
    changes: Mapping[str, Any]

    def applies(self, host: str, rule: str) -> bool:
        """True when this override changes ``rule`` for ``host``."""
        return (not self.rules or rule in self.rules) and \
            any(fnmatch.fnmatchcase(host, p) for p in self.hosts)


@dataclass(frozen=True)
class Policy:
    """Every rule, override and route, validated."""

    rules: tuple[Rule, ...]
    overrides: tuple[Override, ...] = ()
    routes: tuple[Route, ...] = ()
    _cache: dict[str, tuple[tuple[Rule, bool], ...]] = field(
        default_factory=dict, compare=False, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        """Rule names, in order."""
        return tuple(r.name for r in self.rules)

    @property
    def fields(self) -> tuple[str, ...]:
        """Every host-state field any rule or override reads, plus what evaluation needs."""
        seen: dict[str, None] = dict.fromkeys(("status", "last_seen_ms", "stale", "checks"))
        conditions = [c for r in self.rules for c in (*r.when, *r.critical_when)]
        for override in self.overrides:
            for key in ("when", "critical_when"):
                conditions.extend(override.changes.get(key, ()))
        for condition in conditions:
            seen.update(dict.fromkeys(condition.fields))
        return tuple(seen)

    def rule(self, name: str) -> Rule | None:
        """The base rule called ``name``."""
        return next((r for r in self.rules if r.name == name), None)

    def rules_for(self, host: str) -> tuple[tuple[Rule, bool], ...]:
        """Every rule with its overrides for ``host`` applied, and whether it applies.

        Rules that do not apply are still listed so an alert they left firing
        resolves instead of hanging on.
        """
        cached = self._cache.get(host)
        if cached is not None:
            return cached
        result = []
        for rule in self.rules:
            changes: dict[str, Any] = {}
            for override in self.overrides:
                if override.applies(host, rule.name):
                    changes.update(override.changes)
            effective = dataclasses.replace(rule, **changes) if changes else rule
            result.append((effective, effective.applies_to(host)))
        value = tuple(result)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[host] = value
        return value

    def route(self, host: str, check: str, severity: str, kind: str,
              configured: Sequence[str]) -> tuple[str, ...]:
        """Channels for a notification; every configured channel when no route is set."""
        if not self.routes:
            return tuple(configured)
        chosen: dict[str, None] = {}
        for route in self.routes:
            if route.matches(host, check, severity, kind):
                for channel in route.channels:
                    if channel in configured:
                        chosen.setdefault(channel, None)
                if not route.continue_:
                    break
        return tuple(chosen)

    def check_channels(self, configured: Iterable[str]) -> None:
        """ConfigError when a route names a channel that is not configured."""
        available = set(configured)
        for index, route in enumerate(self.routes):
            for channel in route.channels:
                if channel not in available:
                    raise ConfigError(f"rules.routes[{index}].channels",
                                      f"channel {channel} is not configured (set up its "
                                      f"[{channel}] section)")


# -- loading and validation ---------------------------------------------------------

_RULE_KEYS = {"when", "critical_when", "severity", "for", "repeat", "missing", "hosts",
              "enabled", "hint", "flap_window", "flap_high", "flap_low", "notify_resolved"}
_DEFAULT_KEYS = _RULE_KEYS - {"when", "critical_when", "hint"}
_ROUTE_KEYS = {"channels", "hosts", "severity", "checks", "kinds", "continue"}
_OVERRIDE_KEYS = (_RULE_KEYS | {"rule"}) - {"hint"}


def _strings(value: Any, where: str, *, allow_single: bool = True) -> tuple[str, ...]:
    if isinstance(value, str) and allow_single:
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(where, "must be a list of texts")
    return tuple(value)


def _field_values(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Rule fields in ``raw`` parsed into Rule keyword arguments."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{where}.{key}"
        if key in ("when", "critical_when"):
            conditions = []
            for index, text in enumerate(_strings(value, name)):
                try:
                    conditions.append(Condition.parse(text))
                except ValueError as exc:
                    raise ConfigError(f"{name}[{index}]", str(exc)) from None
            values[key] = tuple(conditions)
        elif key == "severity":
            if value not in SEVERITIES:
                raise ConfigError(name, "must be warning or critical")
            values["severity"] = value
        elif key in ("for", "repeat"):
            try:
                values[f"{key}_s"] = parse_duration(value)
            except ValueError as exc:
                raise ConfigError(name, str(exc)) from None
        elif key == "missing":
            if value not in ("ok", "breach"):
                raise ConfigError(name, "must be ok or breach")
            values["missing"] = value
        elif key == "hosts":
            patterns = _strings(value, name)
            if not patterns:
                raise ConfigError(name, "must name at least one host pattern")
            values["hosts"] = patterns
        elif key in ("enabled", "notify_resolved"):
            if not isinstance(value, bool):
                raise ConfigError(name, "must be true or false")
            values[key] = value
        elif key == "hint":
            if not isinstance(value, str):
                raise ConfigError(name, "must be a text")
            values["hint"] = value
        elif key == "flap_window":
            if isinstance(value, bool) or not isinstance(value, int) or not 3 <= value <= 100:
                raise ConfigError(name, "must be a whole number between 3 and 100")
            values["flap_window"] = value
        elif key in ("flap_high", "flap_low"):
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not 0 < value <= 100:
                raise ConfigError(name, "must be a percentage above 0 and at most 100")
            values[key] = float(value)
    return values


def _check_rule(rule: Rule, where: str) -> None:
    if not rule.when and not rule.critical_when:
        raise ConfigError(f"{where}.when", "a rule needs at least one condition")
    if rule.flap_low >= rule.flap_high:
        raise ConfigError(f"{where}.flap_low", f"must be below flap_high ({rule.flap_high})")


def _unknown(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", "is not a known setting "
                              f"(one of {', '.join(sorted(allowed))})")


def _tables(table: Mapping[str, Any], key: str, where: str, allowed: set[str],
            required: str, meaning: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The entries of the array of tables ``[[rules.<key>]]``, each with its place.

    Each entry is checked as it is reached (a table, known keys, ``required``
    set), so the first mistake in file order is the one reported.
    """
    entries = table.get(key, [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}.{key}", f"must be an array of tables ([[rules.{key}]])")
    for index, raw in enumerate(entries):
        entry_where = f"{where}.{key}[{index}]"
        if not isinstance(raw, dict):
            raise ConfigError(entry_where, "must be a table")
        _unknown(raw, allowed, entry_where)
        if required not in raw:
            raise ConfigError(f"{entry_where}.{required}", f"must be set ({meaning})")
        yield entry_where, raw


def load_policy(table: Mapping[str, Any] | None, where: str = "rules") -> Policy:
    """Build and validate the policy from a ``[rules]`` table (None: built-ins only)."""
    table = dict(table or {})
    if not isinstance(table, dict):
        raise ConfigError(where, "must be a table")
    raw_defaults = table.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise ConfigError(f"{where}.defaults", "must be a table")
    _unknown(raw_defaults, _DEFAULT_KEYS, f"{where}.defaults")
    defaults = _field_values({**DEFAULTS, **raw_defaults}, f"{where}.defaults")

    rules: list[Rule] = []
    names = list(BUILTIN_RULES) + [k for k in table if k not in RESERVED and
                                   k not in BUILTIN_RULES]
    for name in names:
        rule_where = f"{where}.{name}"
        raw_rule = table.get(name, {})
        if not isinstance(raw_rule, dict):
            raise ConfigError(rule_where, "must be a table")
        if not CHECK_NAME_PATTERN.match(name):
            raise ConfigError(rule_where, "a rule name is lower-case letters, digits and _ "
                              "(at most 32), starting with a letter")
        _unknown(raw_rule, _RULE_KEYS, rule_where)
        if name not in BUILTIN_RULES and "when" not in raw_rule and \
                "critical_when" not in raw_rule:
            raise ConfigError(f"{rule_where}.when", "a new rule needs at least one condition")
        merged = {**BUILTIN_RULES.get(name, {}), **raw_rule}
        values = {**defaults, **_field_values(merged, rule_where)}
        values.setdefault("hint", HINTS.get(name, ""))
        values.setdefault("when", ())
        rule = Rule(name=name, **values)
        _check_rule(rule, rule_where)
        rules.append(rule)

    overrides = []
    known = {r.name for r in rules}
    for o_where, raw in _tables(table, "overrides", where, _OVERRIDE_KEYS,
                                "hosts", "glob patterns of host ids"):
        hosts = _strings(raw["hosts"], f"{o_where}.hosts")
        targets = _strings(raw.get("rule", []), f"{o_where}.rule")
        for target in targets:
            if target not in known:
                raise ConfigError(f"{o_where}.rule", f"there is no rule named {target!r}")
        # An override's "hosts" selects hosts; it never rewrites a rule's own hosts.
        changes = _field_values({k: v for k, v in raw.items() if k not in ("hosts", "rule")},
                                o_where)
        for rule in rules:
            if not targets or rule.name in targets:
                _check_rule(dataclasses.replace(rule, **changes), f"{o_where} (on {rule.name})")
        overrides.append(Override(hosts=hosts, rules=targets, changes=changes))

    routes = []
    for r_where, raw in _tables(table, "routes", where, _ROUTE_KEYS,
                                "channels", "mail, slack, webhook"):
        channels = _strings(raw["channels"], f"{r_where}.channels")
        for channel in channels:
            if channel not in CHANNELS:
                raise ConfigError(f"{r_where}.channels",
                                  f"{channel!r} is not a channel ({', '.join(CHANNELS)})")
        severity = _strings(raw.get("severity", []), f"{r_where}.severity")
        for item in severity:
            if item not in SEVERITIES:
                raise ConfigError(f"{r_where}.severity", f"{item!r} is not warning or critical")
        kinds = _strings(raw.get("kinds", []), f"{r_where}.kinds")
        for item in kinds:
            if item not in NOTIFICATION_KINDS:
                raise ConfigError(f"{r_where}.kinds", f"{item!r} is not one of "
                                  f"{', '.join(NOTIFICATION_KINDS)}")
        cont = raw.get("continue", False)
        if not isinstance(cont, bool):
            raise ConfigError(f"{r_where}.continue", "must be true or false")
        routes.append(Route(channels=channels,
                            hosts=_strings(raw.get("hosts", ["*"]), f"{r_where}.hosts"),
                            severity=severity,
                            checks=_strings(raw.get("checks", []), f"{r_where}.checks"),
                            kinds=kinds, continue_=cont))
    return Policy(rules=tuple(rules), overrides=tuple(overrides), routes=tuple(routes))


def rules_table(document: Mapping[str, Any], rules_file: Path | None) -> tuple[Any, str]:
    """The ``[rules]`` table to use and where it came from (for messages)."""
    if rules_file is None:
        return document.get("rules"), "rules"
    try:
        with open(rules_file, "rb") as handle:
            loaded = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("alerter.rules_file", f"{rules_file} does not exist") from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError):
        raise ConfigError("alerter.rules_file", f"{rules_file} cannot be read") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("alerter.rules_file", f"{rules_file} is not valid TOML ({exc})") \
            from None
    extra = [k for k in loaded if k != "rules"]
    if extra:
        raise ConfigError(f"{rules_file}", f"only [rules] tables belong in a rules file, "
                          f"found [{extra[0]}]")
    return loaded.get("rules", {}), "rules"


def load_rules(document: Mapping[str, Any], rules_file: Path | str | None) -> Policy:
    """The validated policy from the main document or the rules file."""
    path = Path(rules_file) if rules_file is not None else None
    table, where = rules_table(document, path)
    return load_policy(table, where)
