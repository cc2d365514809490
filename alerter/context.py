"""The configuration the alerter's jobs run with, loaded once per worker.

``mtbbs-alerter worker`` reads the configuration file, validates the rules
and the channels, resolves the secrets and installs the result with
:func:`set_context` *before* rq starts: jobs (in the worker process, or in
a work-horse forked from it, which inherits the module state) fetch it with
:func:`get_context`. Jobs therefore take only plain arguments (a host id, a
channel name, a delivery), and a job run outside such a worker fails with a
clear message instead of guessing a configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alerter.notify import Notifier
from alerter.notify.mail import MailNotifier
from alerter.notify.slack import SlackNotifier
from alerter.notify.webhook import WebhookNotifier
from alerter.rules import Policy, load_rules
from alerter.settings import AlerterSettings, MailSettings, SlackSettings, WebhookSettings
from alerter.silences import SilenceError, check_timezone
from wire.config import RedisSettings, connect, load_section
from wire.errors import ConfigError
from wire.keys import KeySpace


@dataclass
class AlerterContext:
    """Settings, rules and channels of one alerter process."""

    redis_settings: RedisSettings
    settings: AlerterSettings
    policy: Policy
    notifiers: dict[str, Notifier]
    mail: MailSettings = field(default_factory=MailSettings)
    slack: SlackSettings = field(default_factory=SlackSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    _client: Any = field(default=None, repr=False)

    @property
    def keys(self) -> KeySpace:
        """Key names under the configured prefix."""
        return self.redis_settings.keys

    @property
    def client(self) -> Any:
        """The Redis client of this process (redis-py reconnects after a fork)."""
        if self._client is None:
            self._client = connect(self.redis_settings)
        return self._client

    @property
    def channels(self) -> tuple[str, ...]:
        """The configured channels."""
        return tuple(self.notifiers)


def load_channel_settings(document: Mapping[str, Any], env: Mapping[str, str] | None
                          ) -> tuple[MailSettings, SlackSettings, WebhookSettings]:
    """The three channel sections."""
    return (load_section(MailSettings, document, "mail", env),
            load_section(SlackSettings, document, "slack", env),
            load_section(WebhookSettings, document, "webhook", env))


def build_notifiers(mail: MailSettings, slack: SlackSettings, webhook: WebhookSettings,
                    title: str | None = None) -> dict[str, Notifier]:
    """A notifier for every configured channel (secrets resolved here)."""
    notifiers: dict[str, Notifier] = {}
    mail.validate()
    if mail.enabled:
        notifiers["mail"] = MailNotifier(mail, mail.resolved_password())
    if slack.enabled:
        url = slack.resolved_url()
        if url:
            notifiers["slack"] = SlackNotifier(url, timeout=slack.timeout, title=slack.title)
    if webhook.enabled:
        url = webhook.resolved_url()
        if url:
            notifiers["webhook"] = WebhookNotifier(url, timeout=webhook.timeout,
                                                   token=webhook.resolved_token(),
                                                   title=title or slack.title)
    return notifiers


def build_context(document: Mapping[str, Any], redis_settings: RedisSettings,
                  env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> AlerterContext:
    """Load and validate everything; ConfigError names what is wrong."""
    settings = load_section(AlerterSettings, document, "alerter", env, overrides)
    try:
        check_timezone(settings.timezone)
    except SilenceError as exc:
        raise ConfigError("alerter.timezone", str(exc)) from None
    policy = load_rules(document, settings.rules_file)
    mail, slack, webhook = load_channel_settings(document, env)
    notifiers = build_notifiers(mail, slack, webhook)
    policy.check_channels(notifiers)
    return AlerterContext(redis_settings=redis_settings, settings=settings, policy=policy,
                          notifiers=notifiers, mail=mail, slack=slack, webhook=webhook)


_current: AlerterContext | None = None


def set_context(context: AlerterContext | None) -> None:
    """Install the context jobs of this process use (None removes it)."""
    global _current
    _current = context


def get_context() -> AlerterContext:
    """The installed context; RuntimeError when jobs run outside ``mtbbs-alerter worker``."""
    if _current is None:
        raise RuntimeError("alerter jobs run only under `mtbbs-alerter worker`, which loads "
                           "the configuration first")
    return _current
