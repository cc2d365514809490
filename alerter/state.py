"""The alert state machine of one (host, check), and how it is kept in Redis.

States: ``ok`` → ``pending`` (the rule breaches; held for the rule's ``for``)
→ ``firing`` → ``resolved`` (back to good after firing; behaves like ok).
:func:`step` is a pure function of the previous state, the rule's
evaluation, the time (Redis ``TIME``, passed in) and whether a silence
matches; it returns the next state and the notices to send. What the
channels were last told is part of the state (``notified``), so a firing
alert whose notice was silenced is announced when the silence ends, and a
resolution is only announced for a firing that was.

Flapping follows Nagios: the evaluation levels of the last ``flap_window``
reports form a history; the share of changes between neighbours, weighted
from 0.75 (oldest) to 1.25 (newest), is the flap percentage. A change counts
only between OK and a problem: WARNING→CRITICAL (a stale host escalating)
is one problem getting worse, not a flap. Crossing
``flap_high`` starts flapping (one notice), falling under ``flap_low`` stops
it (one notice); while flapping, firing/resolved/repeat notices are held
back and the state is reconciled with the channels when it stops.

The state is a hash of plain text fields at ``KeySpace.alert(host, check)``
(readable with ``redis-cli HGETALL``); ``KeySpace.alerts_index()`` lists
every such hash as ``host/check``. :mod:`alerter.evaluate` performs
transitions under WATCH/MULTI so that two workers never both fire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from alerter.rules import CRITICAL, OK, WARNING, Evaluation, Rule
from wire.replies import text as _text
from wire.state import iso_from_ms

STATE_OK = "ok"
PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"
STATES = (STATE_OK, PENDING, FIRING, RESOLVED)
INACTIVE = frozenset({STATE_OK, RESOLVED})

NOTIFIED_OK = "ok"

FIRING_NOTICE = "firing"
REPEAT_NOTICE = "repeat"
RESOLVED_NOTICE = "resolved"
FLAPPING_NOTICE = "flapping"
FLAPPING_STOPPED_NOTICE = "flapping_stopped"

_LOW_WEIGHT = 0.75
_HIGH_WEIGHT = 1.25


def severity_name(level: int) -> str:
    """``warning``/``critical`` (lower case, as in rules) of a level; ``ok`` for 0."""
    return {WARNING: "warning", CRITICAL: "critical"}.get(level, "ok")


def flap_percent(history: str, window: int) -> float:
    """Weighted percentage of changes between OK and a problem in ``history`` (oldest
    first); a change of severity within a problem is none."""
    if len(history) < 2 or window < 2:
        return 0.0
    breached = [level != str(OK) for level in history]
    changes = [breached[i] != breached[i - 1] for i in range(1, len(breached))]
    slots = window - 1
    total = 0.0
    # The newest change weighs 1.25, the oldest a full window can hold 0.75.
    for age, changed in enumerate(reversed(changes)):
        if changed:
            total += _HIGH_WEIGHT - (_HIGH_WEIGHT - _LOW_WEIGHT) * age / max(slots - 1, 1)
    return round(100.0 * total / slots, 2)


def _int(raw: Mapping[str, str], key: str) -> int:
    try:
        return int(raw.get(key, "0") or 0)
    except ValueError:
        return 0


def _float(raw: Mapping[str, str], key: str) -> float:
    try:
        return float(raw.get(key, "0") or 0)
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class AlertState:
    """Everything the machine remembers about one (host, check)."""

    state: str = STATE_OK
    level: int = OK  # of the current (or, once resolved, the last) breach
    since_ms: int = 0  # when ``state`` began
    firing_since_ms: int = 0  # start of the current or last firing episode
    history: str = ""  # evaluation levels, oldest first, at most flap_window
    flapping: bool = False
    flap_percent: float = 0.0
    flap_since_ms: int = 0
    notified: str = NOTIFIED_OK  # what the channels were last told: ok or firing:<severity>
    last_notified_ms: int = 0
    repeats: int = 0
    suppressed: str = ""  # the ``notified`` value a silence last held back
    seq: int = 0  # counts notices, so every notice has its own id
    mark: str = ""  # the report (last_seen_ms:stale) last added to the history
    summary: str = ""
    breach_summary: str = ""  # the summary of the last breach, for the resolved notice

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> AlertState:
        """Decode a stored hash (bytes or text); {} is a fresh ``ok`` state."""
        fields = {_text(k): _text(v) for k, v in raw.items()}
        state = fields.get("state", STATE_OK)
        return cls(
            state=state if state in STATES else STATE_OK,
            level=_int(fields, "level"),
            since_ms=_int(fields, "since_ms"),
            firing_since_ms=_int(fields, "firing_since_ms"),
            history=fields.get("history", ""),
            flapping=fields.get("flapping") == "yes",
            flap_percent=_float(fields, "flap_percent"),
            flap_since_ms=_int(fields, "flap_since_ms"),
            notified=fields.get("notified", NOTIFIED_OK) or NOTIFIED_OK,
            last_notified_ms=_int(fields, "last_notified_ms"),
            repeats=_int(fields, "repeats"),
            suppressed=fields.get("suppressed", ""),
            seq=_int(fields, "seq"),
            mark=fields.get("mark", ""),
            summary=fields.get("summary", ""),
            breach_summary=fields.get("breach_summary", ""),
        )

    def to_hash(self, host: str, check: str, now_ms: int) -> dict[str, str]:
        """The stored hash: machine fields plus readable times."""
        return {
            "host": host,
            "check": check,
            "state": self.state,
            "severity": severity_name(self.level),
            "level": str(self.level),
            "since": iso_from_ms(self.since_ms) if self.since_ms else "",
            "since_ms": str(self.since_ms),
            "firing_since_ms": str(self.firing_since_ms),
            "history": self.history,
            "flapping": "yes" if self.flapping else "no",
            "flap_percent": f"{self.flap_percent:g}",
            "flap_since_ms": str(self.flap_since_ms),
            "notified": self.notified,
            "last_notified_ms": str(self.last_notified_ms),
            "repeats": str(self.repeats),
            "suppressed": self.suppressed,
            "seq": str(self.seq),
            "mark": self.mark,
            "summary": self.summary,
            "breach_summary": self.breach_summary,
            "updated": iso_from_ms(now_ms),
        }

    @property
    def quiet(self) -> bool:
        """Nothing to remember: good, not flapping, a history without breaches."""
        return self.state in INACTIVE and not self.flapping and \
            set(self.history) <= {"0"} and self.notified == NOTIFIED_OK


@dataclass(frozen=True)
class Notice:
    """A notification the machine decided on."""

    kind: str
    id: str
    level: int
    since_ms: int
    suppressed: bool = False

    @property
    def severity(self) -> str:
        """``warning`` or ``critical``."""
        return severity_name(self.level) if self.level else "warning"


def step(prev: AlertState, evaluation: Evaluation, rule: Rule, *, host: str, now_ms: int,
         mark: str, silenced: bool = False, inhibited: bool = False,
         ) -> tuple[AlertState, list[Notice]]:
    """The next state of one (host, check) and the notices to send.

    ``mark`` identifies the report being judged: the history only grows
    when it differs from the last one (a re-evaluation of the same report,
    by a second worker or the periodic tick, adds nothing). ``inhibited``
    (the host is stale and this rule is not about staleness) freezes the
    state: its figures are as old as the host's last report.
    """
    if inhibited:
        return prev, []
    level = evaluation.level
    history = prev.history
    new_mark = prev.mark
    if mark != prev.mark:
        clean = prev.state in INACTIVE and not prev.flapping and level == OK and \
            set(prev.history) <= {"0"}
        if not clean:
            history = (history + str(level))[-rule.flap_window:]
            new_mark = mark
    percent = flap_percent(history, rule.flap_window)

    state, cur_level, since, firing_since = prev.state, prev.level, prev.since_ms, \
        prev.firing_since_ms
    if level > OK:
        if state in INACTIVE:
            cur_level = level
            if rule.for_s <= 0:
                state, since, firing_since = FIRING, now_ms, now_ms
            else:
                state, since = PENDING, now_ms
        elif state == PENDING:
            cur_level = level
            if now_ms - since >= rule.for_s * 1000:
                state, since, firing_since = FIRING, now_ms, now_ms
        else:
            cur_level = level
    elif state == PENDING:
        state, since, cur_level = STATE_OK, now_ms, OK
    elif state == FIRING:
        state, since = RESOLVED, now_ms

    notices: list[Notice] = []
    seq = prev.seq
    notified, last_notified = prev.notified, prev.last_notified_ms
    repeats, suppressed = prev.repeats, prev.suppressed
    flapping, flap_since = prev.flapping, prev.flap_since_ms

    def notice(kind: str, episode_ms: int, at_level: int, held: bool) -> Notice:
        nonlocal seq
        seq += 1
        return Notice(kind=kind, id=f"{host}/{rule.name}/{kind}/{episode_ms}/{seq}",
                      level=at_level, since_ms=episode_ms, suppressed=held)

    if not flapping and percent >= rule.flap_high:
        flapping, flap_since = True, now_ms
        notices.append(notice(FLAPPING_NOTICE, flap_since, max(cur_level, level, WARNING),
                              silenced))
    elif flapping and percent < rule.flap_low:
        flapping = False
        notices.append(notice(FLAPPING_STOPPED_NOTICE, flap_since,
                              max(cur_level, WARNING), silenced))

    desired = f"firing:{severity_name(cur_level)}" if state == FIRING else NOTIFIED_OK
    if not flapping:
        if desired != notified:
            kind = RESOLVED_NOTICE if desired == NOTIFIED_OK else FIRING_NOTICE
            if kind == RESOLVED_NOTICE and not rule.notify_resolved:
                notified = desired
            elif silenced:
                if suppressed != desired:
                    notices.append(notice(kind, firing_since, cur_level or WARNING, True))
                    suppressed = desired
            else:
                notices.append(notice(kind, firing_since, cur_level or WARNING, False))
                notified, last_notified, repeats, suppressed = desired, now_ms, 0, ""
        elif desired != NOTIFIED_OK and rule.repeat_s > 0 and not silenced and \
                now_ms - last_notified >= rule.repeat_s * 1000:
            repeats += 1
            notices.append(notice(REPEAT_NOTICE, firing_since, cur_level, False))
            last_notified = now_ms
        if desired == notified:
            suppressed = ""

    summary = evaluation.summary
    breach_summary = summary if level > OK else prev.breach_summary
    new = replace(prev, state=state, level=cur_level, since_ms=since, firing_since_ms=firing_since,
                  history=history, flapping=flapping, flap_percent=percent,
                  flap_since_ms=flap_since, notified=notified, last_notified_ms=last_notified,
                  repeats=repeats, suppressed=suppressed, seq=seq, mark=new_mark,
                  summary=summary, breach_summary=breach_summary)
    if prev == AlertState() and new.quiet and not notices:
        # Never breached: nothing to store.
        return prev, []
    return new, notices


def alert_member(host: str, check: str) -> str:
    """The ``alerts_index`` member of one alert."""
    return f"{host}/{check}"

