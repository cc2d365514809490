"""Settings of the alerter: ``[alerter]`` and the channel sections.

Frozen dataclasses filled by :func:`wire.config.load_section` (file section,
then ``MTBBS_<SECTION>_<FIELD>`` variables, then flags). Secrets (the SMTP
password, the Slack and webhook URLs, a webhook token) are ``secret`` fields
kept out of ``repr``, and each can be read from a file instead; they are
resolved only when a channel is built and never logged.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wire.config import non_negative, one_of, positive, read_secret_file, setting
from wire.errors import ConfigError

CHANNELS = ("mail", "slack", "webhook")
WORKER_CLASSES = ("simple", "fork")


def _retry_intervals(value: Any) -> str | None:
    if not value:
        return "must list at least one interval"
    for item in value:
        if not str(item).isdigit():
            return f"{item!r} is not a whole number of seconds"
    return None


def _at_least_one(value: Any) -> str | None:
    return None if value >= 1 else "must be 1 or more"


@dataclass(frozen=True)
class AlerterSettings:
    """``[alerter]``: the rq workers, storm control and retries."""

    rules_file: Path | None = setting(None, "TOML file holding the [rules] tables (else the "
                                      "main configuration's [rules] is used)")
    worker_class: str = setting("simple", "simple: run jobs in the worker process (fast); fork: "
                                "one child process per job (rq's default, more isolation)",
                                check=one_of(*WORKER_CLASSES))
    maintenance_interval: float = setting(10.0, "seconds between a worker's maintenance rounds: "
                                          "re-running abandoned jobs, the periodic re-evaluation "
                                          "and rescuing overdue digests", check=positive)
    abandoned_grace: float = setting(30.0, "seconds after a job's timeout (simple) or its last "
                                     "heartbeat (fork) before a job of a dead worker is re-run",
                                     check=positive)
    evaluate_batch: int = setting(200, "evaluation jobs a worker takes off the queue at once "
                                  "after each one it runs (0: one at a time, rq's full "
                                  "bookkeeping for each)", check=non_negative)
    tick_interval: float = setting(30.0, "seconds between re-evaluations of hosts whose alerts "
                                   "are pending, firing or flapping (hold-down and repeats "
                                   "also advance for hosts that stopped reporting)",
                                   check=positive)
    digest_window: float = setting(2.0, "after a message, seconds during which further alerts "
                                   "of the same channel are collected into one digest",
                                   check=non_negative)
    digest_max: int = setting(50, "most alerts in one message; the rest follow in the next",
                              check=_at_least_one)
    rate_limit: int = setting(20, "most messages per channel within rate_period (a digest is "
                              "one message)", check=_at_least_one)
    rate_period: float = setting(60.0, "seconds of the rate limit's sliding window",
                                 check=positive)
    retry_max: int = setting(5, "retries of a delivery after a temporary error",
                             check=non_negative)
    retry_intervals: tuple[str, ...] = setting(("5", "30", "120", "600", "1800"),
                                               "seconds before each retry; the last one repeats",
                                               check=_retry_intervals)
    retry_after_max: float = setting(900.0, "longest Retry-After (HTTP 429) honoured, seconds",
                                     check=positive)
    delivery_timeout: int = setting(60, "rq timeout of one delivery job, seconds",
                                    check=_at_least_one)
    abandoned_retries: int = setting(3, "times a delivery whose worker died is run again",
                                     check=_at_least_one)
    sent_ttl: int = setting(7 * 86400, "seconds a delivered notification id is remembered "
                            "(deduplication)", check=_at_least_one)
    resolved_ttl: int = setting(7 * 86400, "seconds a resolved alert state is kept once its "
                                "flap history is clean", check=_at_least_one)
    log_length: int = setting(1000, "entries kept in the notification log",
                              check=_at_least_one)
    failed_max: int = setting(1000, "failed deliveries kept (the oldest are dropped)",
                              check=_at_least_one)
    timezone: str = setting("UTC", "time zone of daily silence windows (IANA name)")

    @property
    def retry_seconds(self) -> list[int]:
        """The retry intervals as integers (rq's Retry wants whole seconds)."""
        return [int(item) for item in self.retry_intervals]


def _read_secret(value: str | None, path: Path | None, setting_name: str) -> str | None:
    if value:
        return value
    if path is None:
        return None
    try:
        secret = read_secret_file(path, f"{setting_name}_file")
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"{setting_name}_file", f"cannot read {path}") from None
    if not secret:
        raise ConfigError(f"{setting_name}_file", f"{path} is empty")
    return secret


def _http_url(value: str, setting_name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The value is a secret: name the problem, never echo the URL.
        raise ConfigError(setting_name, "must be an http:// or https:// URL")
    return value


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class MailSettings:
    """``[mail]``: SMTP delivery. Mail is off while ``host`` or ``to`` is unset."""

    host: str | None = setting(None, "SMTP server")
    port: int = setting(0, "SMTP port (0: 465 for ssl, else 25)", check=non_negative)
    security: str = setting("starttls", "plain, starttls or ssl (implicit TLS)",
                            check=one_of("plain", "starttls", "ssl"))
    username: str | None = setting(None, "SMTP user for AUTH (needs starttls or ssl unless "
                                   "the server is on loopback)")
    password: str | None = setting(None, "SMTP password (prefer password_file or "
                                   "MTBBS_MAIL_PASSWORD)", secret=True)
    password_file: Path | None = setting(None, "file whose first line is the SMTP password")
    from_addr: str = setting("mtbbs-monitor@localhost", "sender address")
    to: tuple[str, ...] = setting((), "recipient addresses")
    timeout: float = setting(10.0, "seconds for the SMTP connection and each command",
                             check=positive)
    subject_prefix: str = setting("[MTBBS]", "start of every subject")
    tls_ca_file: Path | None = setting(None, "CA bundle to verify the server's certificate")
    tls_verify: bool = setting(True, "verify the server's certificate (starttls, ssl)")

    @property
    def enabled(self) -> bool:
        """Mail is configured."""
        return bool(self.host) and bool(self.to)

    def resolved_password(self) -> str | None:
        """The password, from ``password_file`` when one is named."""
        return _read_secret(self.password, self.password_file, "mail.password")

    @property
    def effective_port(self) -> int:
        """The port to connect to."""
        if self.port:
            return self.port
        return 465 if self.security == "ssl" else 25

    def validate(self) -> None:
        """Raise ConfigError for a configuration that cannot work."""
        if not self.enabled:
            return
        for address in (self.from_addr, *self.to):
            if "@" not in address or any(c in address for c in "\r\n\t ,<>\"") or not \
                    address.isprintable():
                raise ConfigError("mail.to" if address in self.to else "mail.from_addr",
                                  f"{address!r} is not a plain mail address")
        if self.username and self.security == "plain" and not is_loopback(self.host or ""):
            raise ConfigError("mail.username", "authentication over a plain connection would "
                              "send the password in clear; set mail.security to starttls or ssl")
        if self.username:
            password = self.resolved_password()
            if password is None:
                raise ConfigError("mail.password", "must be set (or password_file) with a "
                                  "username")
            # smtplib encodes AUTH credentials as ASCII.
            if not self.username.isascii():
                raise ConfigError("mail.username", "must be ASCII for SMTP AUTH")
            if not password.isascii():
                raise ConfigError("mail.password", "must be ASCII for SMTP AUTH")


@dataclass(frozen=True)
class SlackSettings:
    """``[slack]``: a Slack incoming webhook. Off while no URL is set."""

    webhook_url: str | None = setting(None, "incoming webhook URL (a secret: prefer "
                                      "webhook_url_file or MTBBS_SLACK_WEBHOOK_URL)",
                                      secret=True)
    webhook_url_file: Path | None = setting(None, "file whose first line is the webhook URL")
    timeout: float = setting(10.0, "seconds for the HTTP request", check=positive)
    title: str = setting("MTBBS Health Alert", "heading of every message")

    def resolved_url(self) -> str | None:
        """The webhook URL, from the file when one is named."""
        url = _read_secret(self.webhook_url, self.webhook_url_file, "slack.webhook_url")
        return None if url is None else _http_url(url, "slack.webhook_url")

    @property
    def enabled(self) -> bool:
        """A URL or a URL file is configured."""
        return bool(self.webhook_url) or self.webhook_url_file is not None


@dataclass(frozen=True)
class WebhookSettings:
    """``[webhook]``: a generic JSON webhook. Off while no URL is set."""

    url: str | None = setting(None, "URL the JSON document is POSTed to (a secret: prefer "
                              "url_file or MTBBS_WEBHOOK_URL)", secret=True)
    url_file: Path | None = setting(None, "file whose first line is the URL")
    token: str | None = setting(None, "bearer token sent as Authorization (prefer token_file)",
                                secret=True)
    token_file: Path | None = setting(None, "file whose first line is the bearer token")
    timeout: float = setting(10.0, "seconds for the HTTP request", check=positive)

    def resolved_url(self) -> str | None:
        """The URL, from the file when one is named."""
        url = _read_secret(self.url, self.url_file, "webhook.url")
        return None if url is None else _http_url(url, "webhook.url")

    def resolved_token(self) -> str | None:
        """The bearer token, from the file when one is named."""
        return _read_secret(self.token, self.token_file, "webhook.token")

    @property
    def enabled(self) -> bool:
        """A URL or a URL file is configured."""
        return bool(self.url) or self.url_file is not None
