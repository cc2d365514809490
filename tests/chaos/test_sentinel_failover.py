"""High availability: the agent follows a Sentinel failover and loses nothing."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.e2e
def test_agent_follows_a_sentinel_failover(run_scenario: Any) -> None:
    figures = run_scenario("sentinel_failover.py", "--before", "20", "--after", "20")
    assert figures["on_old_master_at_kill"] >= 20
    assert figures["reports_made"] >= 40
    # Every report made is on the promoted replica and the spool is empty. A
    # copy re-sent after a reply lost in the failover may be there too (the
    # collector skips it): the reports without the copies are those made.
    assert figures["missing_seqs"] == []
    assert figures["stored_on_new_master"] - figures["copies"] == figures["reports_made"]
    assert figures["left_in_spool"] == 0
    assert figures["agent_exit"] == 0
