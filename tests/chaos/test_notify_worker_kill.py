"""An alerter worker SIGKILLed during a notification: each endpoint gets it once."""

from __future__ import annotations

from typing import Any

import pytest


def run(scenario_once: Any, hold: str) -> dict[str, Any]:
    return dict(scenario_once("notify_worker_kill.py", "--hold", hold, "--settle", "3"))


@pytest.mark.e2e
@pytest.mark.parametrize("hold", ["mail", "slack"])
def test_worker_killed_mid_notification(scenario_once: Any, hold: str) -> None:
    figures = run(scenario_once, hold)
    assert figures["alert_state"] == "firing"
    assert figures["killed_during"] == hold
    for channel in ("mail", "slack"):
        assert figures[f"{channel}_accepted"] == figures[f"{channel}_expected"] == 1
        assert figures[f"{channel}_duplicates"] == 0
    # The held conversation was really cut off and really tried again.
    if hold == "mail":
        assert figures["smtp_conversations"] == 2
    else:
        assert figures["slack_requests"] == 2
        assert figures["slack_answers_cut_off_by_the_kill"] == 1


@pytest.mark.e2e
def test_the_second_worker_stops_on_sigterm(scenario_once: Any) -> None:
    assert run(scenario_once, "mail")["worker_exit_on_sigterm"] == 0
