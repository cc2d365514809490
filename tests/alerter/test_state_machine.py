"""The alert state machine, driven with an injected clock (no Redis)."""

from __future__ import annotations

import dataclasses

import pytest

from alerter.rules import CRITICAL, OK, WARNING, Evaluation, Rule, load_policy
from alerter.state import AlertState, Notice, flap_percent, step


def rule(**changes: object) -> Rule:
    base = load_policy(None).rule("disk_space")
    assert base is not None
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class Machine:
    """Feeds evaluations one report at a time, with a clock the test moves."""

    def __init__(self, the_rule: Rule) -> None:
        self.rule = the_rule
        self.state = AlertState()
        self.now = 1_800_000_000_000
        self.report = 0
        self.sent: list[Notice] = []
        self.held: list[Notice] = []

    def feed(self, level: int, *, advance_s: float = 1.0, new_report: bool = True,
             silenced: bool = False, inhibited: bool = False) -> list[Notice]:
        self.now += int(advance_s * 1000)
        if new_report:
            self.report += 1
        evaluation = Evaluation(level=level, summary="breach" if level else "ok")
        self.state, notices = step(self.state, evaluation, self.rule, host="bbs-01",
                                   now_ms=self.now, mark=f"{self.report}:no",
                                   silenced=silenced, inhibited=inhibited)
        self.sent += [n for n in notices if not n.suppressed]
        self.held += [n for n in notices if n.suppressed]
        return notices

    def kinds(self) -> list[str]:
        return [n.kind for n in self.sent]


def test_fires_at_once_without_hold_down_and_resolves() -> None:
    machine = Machine(rule())
    assert machine.feed(OK) == []
    assert machine.state == AlertState()  # never breached: nothing to store
    [notice] = machine.feed(WARNING)
    assert notice.kind == "firing" and notice.level == WARNING
    assert notice.id == f"bbs-01/disk_space/firing/{machine.now}/1"
    assert machine.state.state == "firing"
    assert machine.feed(WARNING) == []
    [resolved] = machine.feed(OK)
    assert resolved.kind == "resolved" and resolved.since_ms == notice.since_ms
    assert machine.state.state == "resolved"
    assert machine.feed(OK) == []


def test_hold_down_keeps_a_breach_pending() -> None:
    machine = Machine(rule(for_s=60.0))
    assert machine.feed(WARNING) == []
    assert machine.state.state == "pending"
    assert machine.feed(WARNING, advance_s=30) == []
    assert machine.state.state == "pending"
    [notice] = machine.feed(WARNING, advance_s=30)
    assert notice.kind == "firing"
    # A breach that clears during the hold-down is never announced.
    quiet = Machine(rule(for_s=60.0))
    quiet.feed(WARNING)
    quiet.feed(OK, advance_s=30)
    assert quiet.state.state == "ok" and quiet.sent == []


def test_repeats_follow_the_interval_and_the_clock_not_the_reports() -> None:
    machine = Machine(rule(repeat_s=10.0))
    machine.feed(WARNING)
    for _ in range(9):
        machine.feed(WARNING)
    assert machine.kinds() == ["firing"]
    machine.feed(WARNING)  # 10 s after the firing
    assert machine.kinds() == ["firing", "repeat"]
    # A re-evaluation of the same report (the periodic tick) repeats too.
    machine.feed(WARNING, advance_s=10, new_report=False)
    assert machine.kinds() == ["firing", "repeat", "repeat"]
    assert machine.state.repeats == 2
    assert len({n.id for n in machine.sent}) == 3
    never = Machine(rule(repeat_s=0.0))
    for _ in range(5):
        never.feed(WARNING, advance_s=3600)
    assert never.kinds() == ["firing"]


def test_a_change_of_severity_while_firing_is_announced() -> None:
    machine = Machine(rule())
    machine.feed(WARNING)
    [escalated] = machine.feed(CRITICAL)
    assert escalated.kind == "firing" and escalated.level == CRITICAL
    [eased] = machine.feed(WARNING)
    assert eased.level == WARNING and eased.id != machine.sent[0].id
    [resolved] = machine.feed(OK)
    assert resolved.kind == "resolved" and resolved.level == WARNING


def test_flapping_sends_one_notice_then_one_when_it_settles() -> None:
    machine = Machine(rule(repeat_s=0.0))
    for index in range(40):
        machine.feed(WARNING if index % 2 == 0 else OK)
    kinds = machine.kinds()
    assert kinds.count("flapping") == 1
    assert "flapping_stopped" not in kinds
    first_flap = kinds.index("flapping")
    # Before flapping was detected a few firings and resolutions went out; none after.
    assert set(kinds[:first_flap]) <= {"firing", "resolved"}
    assert kinds[first_flap + 1:] == []
    assert machine.state.flapping
    for _ in range(25):
        machine.feed(OK)
    assert machine.kinds().count("flapping_stopped") == 1
    assert not machine.state.flapping
    # Whatever the channels last heard is reconciled: the alert is now ok.
    assert machine.state.notified == "ok"


def test_flap_stop_reconciles_a_firing_state() -> None:
    machine = Machine(rule(repeat_s=0.0))
    for index in range(12):
        machine.feed(WARNING if index % 2 == 0 else OK)
    assert machine.state.flapping
    notified_before = machine.state.notified
    for _ in range(25):
        machine.feed(WARNING)
    assert not machine.state.flapping
    assert machine.state.notified == "firing:warning"
    if notified_before != "firing:warning":
        assert machine.kinds()[-1] == "firing"


def test_flap_percent_is_weighted_towards_recent_changes() -> None:
    assert flap_percent("", 21) == 0.0
    assert flap_percent("0" * 21, 21) == 0.0
    assert flap_percent("01" * 10 + "0", 21) == pytest.approx(100.0)
    recent = flap_percent("0" * 19 + "1" + "0", 21)
    old = flap_percent("0" + "1" + "0" * 19, 21)
    assert recent > old > 0


def test_severity_changes_within_a_problem_are_not_flaps() -> None:
    assert flap_percent("0" * 19 + "12", 21) == flap_percent("0" * 19 + "11", 21)
    assert flap_percent("1212121212121212121212", 21) == 0.0


def test_a_stale_hosts_second_outage_still_escalates_to_critical() -> None:
    """Two outages of a host inside the flap window, each WARNING then CRITICAL:
    each escalation is sent, nothing is taken for flapping."""
    stale_rule = load_policy(None).rule("stale")
    assert stale_rule is not None
    machine = Machine(stale_rule)
    machine.feed(OK)
    machine.feed(WARNING)
    machine.feed(CRITICAL)
    for _ in range(3):
        machine.feed(OK)
    machine.feed(WARNING)
    [escalated] = machine.feed(CRITICAL)
    assert escalated.kind == "firing" and escalated.level == CRITICAL
    assert not machine.state.flapping
    assert machine.kinds() == ["firing", "firing", "resolved", "firing", "firing"]


def test_a_silence_holds_notices_back_and_they_follow_when_it_ends() -> None:
    machine = Machine(rule())
    [held] = machine.feed(WARNING, silenced=True)
    assert held.suppressed and held.kind == "firing"
    assert machine.state.state == "firing"  # the machine still moves
    assert machine.feed(WARNING, silenced=True) == []  # recorded once, not every report
    [firing] = machine.feed(WARNING)
    assert firing.kind == "firing" and not firing.suppressed
    [held_resolved] = machine.feed(OK, silenced=True)
    assert held_resolved.kind == "resolved" and held_resolved.suppressed
    [resolved] = machine.feed(OK)
    assert resolved.kind == "resolved"
    # Fired and resolved within one silence: nothing to say afterwards.
    quiet = Machine(rule())
    quiet.feed(WARNING, silenced=True)
    quiet.feed(OK, silenced=True)
    quiet.feed(OK)
    assert quiet.sent == []


def test_inhibition_freezes_the_alert() -> None:
    machine = Machine(rule())
    machine.feed(WARNING)
    before = machine.state
    assert machine.feed(OK, inhibited=True) == []
    assert machine.state == before


def test_the_same_report_does_not_grow_the_history_twice() -> None:
    machine = Machine(rule())
    machine.feed(WARNING)
    machine.feed(OK)
    history = machine.state.history
    machine.feed(OK, new_report=False)
    assert machine.state.history == history
    machine.feed(OK)
    assert machine.state.history == history + "0"


def test_the_stored_hash_round_trips() -> None:
    machine = Machine(rule())
    machine.feed(WARNING)
    machine.feed(CRITICAL)
    stored = machine.state.to_hash("bbs-01", "disk_space", machine.now)
    assert stored["state"] == "firing" and stored["severity"] == "critical"
    assert stored["since"].endswith("Z")
    assert AlertState.from_hash({k.encode(): v.encode() for k, v in stored.items()}) == \
        machine.state
