"""A flood of session events through the reporter: accounted for, memory bounded.

Latency figures are printed for the record (they depend on the machine);
the assertions are about what must hold anywhere.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.e2e
def test_flood_of_session_events(run_scenario: Any) -> None:
    figures = run_scenario("session_flood.py", "--rate", "10000", "--duration", "2",
                           "--max-queue", "5000", "--stream-maxlen", "10000")
    # Every call either became an event or was counted (dropped or unknown).
    assert figures["unaccounted"] == 0
    assert figures["events_called"] == 3 * (20_000 // 3 * 3)
    # The queue holds at most its bound while Redis is down; the rest is dropped.
    assert figures["queue_at_end_of_outage"] <= figures["queue_bound"] == 5000
    assert figures["dropped_while_down"] > 0
    # Everything queued went out once Redis was back (plus the snapshots).
    assert figures["events_sent"] == figures["events_queued"] + figures["snapshots"]
    assert figures["sessions_tracked_at_end"] == 200
    # Memory stays bounded: a few MB for the queue, not one per event.
    assert figures["redis_down_rss_growth_mb"] < 64
    assert figures["redis_back_rss_growth_mb"] < 64
    # The stream is trimmed (MAXLEN ~ allows one macro node over the mark).
    assert figures["stream_len"] <= figures["stream_maxlen"] + 200
