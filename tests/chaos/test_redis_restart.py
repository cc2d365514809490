"""Redis SIGKILLed and restarted (AOF on): no report lost end to end."""

from __future__ import annotations

from typing import Any

import pytest

ARGS = ("--agents", "3", "--interval", "0.2", "--before", "3", "--down", "3", "--after", "3")


@pytest.mark.e2e
def test_no_report_lost_across_a_redis_crash(scenario_once: Any) -> None:
    figures = scenario_once("redis_restart.py", *ARGS)
    assert figures["reports_made"] > 30
    # What Redis acknowledged before the kill came back from the AOF: the
    # newest entry of every host's stream, and so everything before it.
    assert figures["newest_entries_after_restart_from_aof"] == \
        figures["newest_entries_at_kill"] == 3
    # Agent -> spool -> stream: nothing left behind or dropped. (A copy the
    # agent re-sent after a lost reply may be on the stream: at least once.)
    assert figures["left_in_spools"] == 0 and figures["dropped_by_spools"] == 0
    # Stream -> collector -> state: every report applied once, copies skipped,
    # the newest stored.
    assert figures["missing"] == 0
    assert figures["applied_twice"] == 0
    assert figures["reports_stored_in_history"] == figures["reports_made"]
    assert figures["state_behind"] == 0
    assert figures["dead_letters"] == 0
    assert figures["agent_exits"] == [0] and figures["collector_exit"] == 0


@pytest.mark.e2e
def test_no_host_judged_stale_while_only_redis_was_away(scenario_once: Any) -> None:
    figures = scenario_once("redis_restart.py", *ARGS)
    assert figures["stale_transitions_while_agents_alive"] == 0
