"""SMTP and Slack down for a while (shortened here; the script's default is a minute)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.e2e
def test_everything_is_delivered_once_the_endpoints_are_back(run_scenario: Any) -> None:
    figures = run_scenario("notify_endpoints_down.py", "--hosts", "4", "--down", "12",
                           "--settle", "3")
    assert figures["endpoints_down_s"] >= 12
    # Deliveries failed while the endpoints were away, and were retried.
    assert figures["retries_logged_while_down"] > 0
    for channel in ("mail", "slack"):
        assert figures[f"{channel}_accepted"] == figures[f"{channel}_expected"] == 4
        assert figures[f"{channel}_duplicates"] == 0
    assert figures["deliveries_given_up"] == 0
