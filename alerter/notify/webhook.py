"""A generic JSON webhook: the notifications as data, for any receiver."""

from __future__ import annotations

from alerter.notify import Notification
from alerter.notify.http import post_json, url_host
from alerter.notify.render import webhook_payload


class WebhookNotifier:
    """POSTs a JSON document to one URL, with an optional bearer token."""

    channel = "webhook"

    def __init__(self, url: str, *, timeout: float, token: str | None = None,
                 title: str = "MTBBS Health Alert") -> None:
        self._url = url
        self._token = token
        self.timeout = timeout
        self.title = title

    def describe(self) -> str:
        """The receiver's host only."""
        return f"webhook at {url_host(self._url)}"

    def send(self, notifications: list[Notification]) -> str:
        """POST the document; DeliveryError on failure."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        status, _ = post_json(self._url, webhook_payload(self.title, notifications),
                              timeout=self.timeout, headers=headers)
        return f"HTTP {status} from {url_host(self._url)}"
