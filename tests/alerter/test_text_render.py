"""Escaping, sanitising and rendering: headers, bodies, Slack markup, durations."""

from __future__ import annotations

from email import message_from_bytes, policy
from typing import Any

import pytest

from alerter.notify import Notification
from alerter.notify.mail import build_message
from alerter.notify.render import slack_payload, subject, text_body, webhook_payload
from alerter.settings import MailSettings
from alerter.text import (
    body_text,
    format_duration,
    header_text,
    parse_duration,
    slack_escape,
)

HOSTILE = "evil\r\nBcc: victim@example.org\r\n\r\n<!channel> <@U123> & <https://x|click>\x1b[31m"


def note(**changes: Any) -> Notification:
    base: dict[str, Any] = {
        "id": "bbs-01/database/firing/1800000000000/1", "kind": "firing", "host": "bbs-01",
        "check": "database", "severity": "critical",
        "summary": "database.healthy = false (== false)", "since_ms": 1_800_000_000_000,
        "at_ms": 1_800_000_000_000, "figures": {"database.integrity": "corrupt"},
        "hint": "Stop the BBS.",
    }
    base.update(changes)
    return Notification(**base)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), (45, 45.0), ("90s", 90.0), ("5m", 300.0), ("2h", 7200.0),
    ("1h30m", 5400.0), ("1d", 86400.0), ("250ms", 0.25), ("0s", 0.0), ("1.5h", 5400.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1", "1h-5m", "h", True, None, "1x"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_duration_text() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(90) == "1m30s"
    assert format_duration(4 * 3600) == "4h"
    assert format_duration(0.25) == "250ms"


def test_headers_lose_every_line_break_and_control() -> None:
    text = header_text(HOSTILE + "\u2028x\x00y\u202e")
    assert "\r" not in text and "\n" not in text and "\x1b" not in text
    assert "\u2028" not in text and "\x00" not in text and "\u202e" not in text
    assert text.startswith("evil Bcc: victim@example.org <!channel>")
    assert len(header_text("x" * 1000)) == 200


def test_bodies_keep_line_breaks_only() -> None:
    assert body_text("a\r\nb\rc\u2028d\x1b[31me\x07") == "a\nb\nc\nd[31me"
    assert body_text("日本語のテキスト\tタブ") == "日本語のテキスト\tタブ"


def test_slack_markup_is_inert() -> None:
    escaped = slack_escape("<!channel> & <@U1> <https://evil|x>")
    assert escaped == "&lt;!channel&gt; &amp; &lt;@U1&gt; &lt;https://evil|x&gt;"
    assert "<" not in escaped and ">" not in escaped


def test_subject_in_the_seed_style() -> None:
    assert subject("[MTBBS]", [note()]) == "[MTBBS] CRITICAL bbs-01 database"
    assert subject("[MTBBS]", [note(kind="resolved")]) == "[MTBBS] RESOLVED bbs-01 database"
    assert subject("[MTBBS]", [note(kind="repeat", repeats=2)]) == \
        "[MTBBS] CRITICAL bbs-01 database (still firing, reminder 2)"
    digest = subject("[MTBBS]", [note(), note(host="bbs-02", severity="warning",
                                              check="disk_space"), note(kind="resolved")])
    # Alerts are counted, not notices: bbs-01's database fired and resolved.
    assert digest == "[MTBBS] 2 alerts: 1 CRITICAL, 1 WARNING, 1 RESOLVED (bbs-01, bbs-02)"
    one = subject("[MTBBS]", [note(), note(kind="resolved")])
    assert one == "[MTBBS] 1 alert: 1 CRITICAL, 1 RESOLVED (bbs-01)"


def test_mail_is_utf8_and_hostile_text_stays_in_the_body() -> None:
    settings = MailSettings(host="127.0.0.1", to=("ops@example.org", "二人目@example.jp"))
    notice = note(summary=HOSTILE, hint="データベースを停止してください。\n次に復元します。",
                  figures={"database.error": HOSTILE, "sessions.user": "山田\r\nX-Evil: 1"})
    message = build_message(settings, [notice])
    raw = message.as_bytes()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "[MTBBS] CRITICAL bbs-01 database"
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert parsed.get_content_charset() == "utf-8"
    assert parsed["Content-Transfer-Encoding"] == "base64"
    body = parsed.get_content()
    assert "データベースを停止してください。" in body and "山田" in body
    assert "MTBBS Health Alert" in body
    assert "\x1b" not in body
    # The hostile text is on one body line, never a header line of its own.
    header_block = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert "victim" not in header_block and "Evil" not in header_block


def test_slack_message_content() -> None:
    payload = slack_payload("MTBBS Health Alert", [note(summary=HOSTILE, hint="<!here> 再起動")])
    assert payload["text"].startswith("*MTBBS Health Alert*: CRITICAL bbs-01 database")
    [attachment] = payload["attachments"]
    assert attachment["color"] == "#d32f2f"
    assert "&lt;!channel&gt;" in attachment["text"] and "<!channel>" not in attachment["text"]
    assert "&lt;!here&gt; 再起動" in attachment["text"]
    fields = {f["title"]: f["value"] for f in attachment["fields"]}
    assert fields["Host"] == "bbs-01" and fields["Check"] == "database"
    assert "database.integrity: corrupt" in fields["Figures"]
    resolved = slack_payload("T", [note(kind="resolved")])["attachments"][0]
    assert resolved["color"] == "#2e7d32"
    assert "What to do" not in resolved["text"]
    warning = slack_payload("T", [note(severity="warning")])["attachments"][0]
    assert warning["color"] == "#f9a825"


def test_digests_render_every_notice_once() -> None:
    notes = [note(host=f"bbs-{i:02d}", id=f"bbs-{i:02d}/database/firing/1/1") for i in range(60)]
    payload = slack_payload("T", notes)
    assert "60 notifications" in payload["text"]
    assert len(payload["attachments"]) == 41  # 40 shown and a "... and 20 more"
    assert "and 20 more" in payload["attachments"][-1]["title"]
    body = text_body("MTBBS Health Alert", notes[:3])
    assert "3 notifications: 3 CRITICAL" in body
    assert body.count("Notification: bbs-0") == 3
    document = webhook_payload("T", notes[:2])
    assert [n["host"] for n in document["notifications"]] == ["bbs-00", "bbs-01"]


def test_notifications_validate_what_they_carry() -> None:
    data = note().to_dict()
    assert Notification.from_dict(data) == note()
    with pytest.raises(ValueError):
        Notification.from_dict(dict(data, host="bad host\r\n"))
    with pytest.raises(ValueError):
        Notification.from_dict(dict(data, kind="explode"))
    with pytest.raises(ValueError):
        Notification.from_dict(["not", "a", "dict"])
