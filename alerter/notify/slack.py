"""Slack incoming webhooks: one coloured, escaped message per delivery."""

from __future__ import annotations

from alerter.notify import Notification
from alerter.notify.http import post_json, url_host
from alerter.notify.render import slack_payload


class SlackNotifier:
    """Posts to one incoming webhook."""

    channel = "slack"

    def __init__(self, url: str, *, timeout: float, title: str) -> None:
        self._url = url
        self.timeout = timeout
        self.title = title

    def describe(self) -> str:
        """The webhook's host only: the URL itself is the secret."""
        return f"slack webhook at {url_host(self._url)}"

    def send(self, notifications: list[Notification]) -> str:
        """Post the message; DeliveryError on failure."""
        status, _ = post_json(self._url, slack_payload(self.title, notifications),
                              timeout=self.timeout)
        return f"HTTP {status} from {url_host(self._url)}"
