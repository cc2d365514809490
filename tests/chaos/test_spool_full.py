"""The agent's spool full while Redis is away: the oldest dropped and counted."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.e2e
def test_spool_full_drops_the_oldest_and_counts_them(run_scenario: Any) -> None:
    figures = run_scenario("spool_full.py", "--reports", "50", "--capacity", "20")
    made = figures["reports_made"]
    assert made >= 50
    assert figures["spooled_at_reconnect"] == 20
    assert figures["lost_uncounted"] == 0
    assert figures["dropped_counted_by_spool"] == figures["dropped_reported_in_stream"] > 0
    assert figures["stored_on_stream"] + figures["dropped_counted_by_spool"] == made
    # The dropped ones are the oldest: what reached the stream is the tail.
    assert figures["oldest_delivered_seq"] == figures["dropped_counted_by_spool"] + 1
    assert figures["duplicates"] == 0 and figures["in_order"]
    assert figures["agent_exit"] == 0
