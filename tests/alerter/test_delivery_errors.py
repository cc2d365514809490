"""Delivery against real local servers: what is temporary, what is permanent."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from alerter.notify import DeliveryError, Notification
from alerter.notify.http import retry_after_seconds
from alerter.notify.mail import MailNotifier
from alerter.notify.slack import SlackNotifier
from alerter.notify.webhook import WebhookNotifier
from alerter.settings import MailSettings, SlackSettings
from wire.errors import ConfigError


def note() -> Notification:
    return Notification(id="bbs-01/disk_space/firing/1/1", kind="firing", host="bbs-01",
                        check="disk_space", severity="warning",
                        summary="disk_space.percent_used = 95.0 (>= 90)", since_ms=1, at_ms=1,
                        figures={"disk_space.percent_used": "95.0"}, hint="古いバックアップを削除")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def slack_error(sink: Any, reply: Any, timeout: float = 5.0) -> DeliveryError:
    sink.replies.append(reply)
    with pytest.raises(DeliveryError) as caught:
        SlackNotifier(sink.url, timeout=timeout, title="T").send([note()])
    assert "secret-token" not in caught.value.message  # the URL is a secret
    return caught.value


def test_slack_success_posts_json(sink: Any) -> None:
    notifier = SlackNotifier(sink.url, timeout=5, title="MTBBS Health Alert")
    assert notifier.send([note()]) == "HTTP 200 from 127.0.0.1"
    assert "secret-token" not in notifier.describe()
    [request] = sink.all_requests()
    assert request["headers"]["Content-Type"].startswith("application/json")
    assert "古いバックアップを削除" in request["json"]["attachments"][0]["text"]


def test_http_statuses(sink: Any) -> None:
    reply_type = type(sink.default)
    for status, body, permanent in [
        (500, "internal error", False), (503, "", False), (408, "", False),
        (404, "no_service", True), (400, "invalid_payload", True),
        (403, "action_prohibited", True), (410, "channel_is_archived", True),
        (302, "", True),
    ]:
        headers = {"Location": "http://127.0.0.1:1/"} if status == 302 else {}
        error = slack_error(sink, reply_type(status=status, body=body, headers=headers))
        assert error.permanent is permanent, (status, error.message)
        assert str(status) in error.message
        if body:
            assert body in error.message


def test_429_is_temporary_and_honours_retry_after(sink: Any) -> None:
    reply_type = type(sink.default)
    error = slack_error(sink, reply_type(status=429, body="rate_limited",
                                         headers={"Retry-After": "7"}))
    assert not error.permanent and error.retry_after == 7.0
    error = slack_error(sink, reply_type(status=429, body=""))
    assert not error.permanent and error.retry_after is None
    assert retry_after_seconds("Sat, 28 Nov 2026 10:00:30 GMT", now=1_795_860_000.0) == 30.0
    assert retry_after_seconds("soon") is None


def test_unreachable_and_slow_receivers_are_temporary(sink: Any) -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook"
    with pytest.raises(DeliveryError) as refused:
        WebhookNotifier(url, timeout=2).send([note()])
    assert not refused.value.permanent
    stall = threading.Event()
    try:
        error = slack_error(sink, type(sink.default)(stall=stall), timeout=0.3)
    finally:
        stall.set()
    assert not error.permanent


def test_webhook_sends_data_and_a_bearer_token(sink: Any) -> None:
    WebhookNotifier(sink.url, timeout=5, token="s3cret").send([note()])
    [request] = sink.all_requests()
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    document = request["json"]
    assert document["source"] == "mtbbs-alerter"
    assert document["notifications"][0]["hint"] == "古いバックアップを削除"


def test_webhook_urls_are_checked_without_echoing_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        SlackSettings(webhook_url="ftp://hooks.example/T/B/secret-token").resolved_url()
    assert "secret-token" not in str(caught.value)
    url_file = tmp_path / "url"
    url_file.write_text("https://hooks.example/services/x\n", encoding="utf-8")
    assert SlackSettings(webhook_url_file=url_file).resolved_url() == \
        "https://hooks.example/services/x"
    assert "hooks.example/services" not in repr(SlackSettings(webhook_url="https://h/s"))


# -- SMTP --------------------------------------------------------------------------------------


def mail_settings(port: int, **changes: Any) -> MailSettings:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "security": "plain",
                              "to": ("ops@example.org",), "timeout": 5.0}
    values.update(changes)
    return MailSettings(**values)


def test_mail_is_delivered_in_utf8(smtp: Any) -> None:
    detail = MailNotifier(mail_settings(smtp.port), None).send([note()])
    assert "accepted by 127.0.0.1" in detail
    [message] = smtp.parsed()
    assert message["Subject"] == "[MTBBS] WARNING bbs-01 disk_space"
    assert "古いバックアップを削除" in message.get_content()
    assert smtp.messages[0]["to"] == ["ops@example.org"]


@pytest.mark.parametrize(("reply", "permanent"), [
    ("550 5.7.1 message refused", True),
    ("451 4.3.0 try again later", False),
    ("552 5.3.4 message too big", True),
])
def test_smtp_replies_decide(smtp: Any, reply: str, permanent: bool) -> None:
    smtp.recorder.reply = reply
    with pytest.raises(DeliveryError) as caught:
        MailNotifier(mail_settings(smtp.port), None).send([note()])
    assert caught.value.permanent is permanent
    assert reply.split()[0] in caught.value.message


def test_smtp_down_is_temporary() -> None:
    with pytest.raises(DeliveryError) as caught:
        MailNotifier(mail_settings(closed_port()), None).send([note()])
    assert not caught.value.permanent


def test_starttls_required_but_not_offered_is_permanent(smtp: Any) -> None:
    with pytest.raises(DeliveryError) as caught:
        MailNotifier(mail_settings(smtp.port, security="starttls"), None).send([note()])
    assert caught.value.permanent
    assert "STARTTLS" in caught.value.message


def test_authentication_needs_tls_off_loopback() -> None:
    with pytest.raises(ConfigError, match="in clear"):
        MailSettings(host="mail.example.org", security="plain", username="u", password="p",
                     to=("a@example.org",)).validate()
    with pytest.raises(ConfigError, match="mail.password"):
        MailSettings(host="mail.example.org", username="u", to=("a@example.org",)).validate()
    with pytest.raises(ConfigError, match="plain mail address"):
        MailSettings(host="h", to=("a@example.org\r\nBcc: x@y",)).validate()
    with pytest.raises(ConfigError, match="ASCII"):
        MailSettings(host="127.0.0.1", username="u", password="päss",
                     to=("a@example.org",)).validate()
    assert "hunter2" not in repr(MailSettings(host="h", password="hunter2"))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
                   ) -> Any:
    from aiosmtpd.smtp import AuthResult

    ok = auth_data.login == b"alerter" and auth_data.password == b"pass-word"
    return AuthResult(success=ok, handled=False)


def test_starttls_with_authentication(smtp_down: Any, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    smtp_down.start(tls_context=context, require_starttls=True, authenticator=_authenticator,
                    auth_require_tls=True)
    settings = mail_settings(smtp_down.port, security="starttls", username="alerter",
                             tls_ca_file=cert)
    MailNotifier(settings, "pass-word").send([note()])
    assert len(smtp_down.messages) == 1
    with pytest.raises(DeliveryError) as caught:
        MailNotifier(settings, "wrong").send([note()])
    assert caught.value.permanent and "authentication" in caught.value.message
    # Without the CA the certificate does not verify: permanent (a configuration problem).
    with pytest.raises(DeliveryError) as unverified:
        MailNotifier(mail_settings(smtp_down.port, security="starttls"), None).send([note()])
    assert unverified.value.permanent


def test_implicit_tls(smtp_down: Any, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    smtp_down.start(ssl_context=context)
    MailNotifier(mail_settings(smtp_down.port, security="ssl", tls_ca_file=cert),
                 None).send([note()])
    assert len(smtp_down.messages) == 1
