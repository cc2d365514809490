"""A collector SIGKILLed mid-batch: another takes over, nothing lost or doubled in state."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.e2e
def test_second_collector_takes_over_a_killed_ones_batch(run_scenario: Any) -> None:
    figures = run_scenario("collector_kill.py", "--hosts", "10", "--reports", "500")
    assert figures["entries"] == 5000
    # Killed while holding entries it had read and not acknowledged...
    assert figures["pending_in_c1_at_kill"] > 0
    # ... which the second collector claimed and applied, with everything else.
    assert figures["reclaimed_by_c2"] >= figures["pending_in_c1_at_kill"]
    assert figures["applied_by_c1_before_kill"] + figures["processed_by_c2"] == 5000
    assert figures["applied_twice"] == 0
    assert figures["never_applied"] == 0
    assert figures["state_behind_newest"] == 0
    assert figures["left_pending"] == 0 and figures["dead_letters"] == 0
    assert figures["c2_exit"] == 0
