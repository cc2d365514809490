"""Silences: validation, matching, daily windows, expiry, storage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis

from alerter import silences
from alerter.silences import SilenceError, in_daily_window, make_silence
from wire.keys import KeySpace

NOW = int(datetime(2026, 11, 28, 10, 0, tzinfo=UTC).timestamp() * 1000)


def test_a_silence_covers_its_hosts_and_check_until_it_ends() -> None:
    silence = make_silence(host="bbs-*", check="disk_space", now_ms=NOW, duration_s=3600,
                           reason="disk replacement", author="sysop")
    assert len(silence.id) == 8
    assert silence.matches("bbs-01", "disk_space")
    assert not silence.matches("bbs-01", "database")
    assert not silence.matches("web-01", "disk_space")
    assert silence.active(NOW) and silence.active(NOW + 3_599_999)
    assert not silence.active(NOW + 3_600_000) and silence.expired(NOW + 3_600_000)
    every_check = make_silence(host="bbs-01", check=None, now_ms=NOW, duration_s=60, reason="x")
    assert every_check.matches("bbs-01", "anything")
    later = make_silence(host="bbs-01", check=None, now_ms=NOW, duration_s=60, reason="x",
                         starts_in_s=600)
    assert not later.active(NOW) and later.active(NOW + 600_000)


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"host": "bbs 01"}, "not a host id"),
    ({"host": "bbs-01\r\nx"}, "not a host id"),
    ({"check": "Disk"}, "not a check name"),
    ({"reason": "  "}, "reason is required"),
    ({"reason": "x" * 501}, "longer than"),
    ({"duration_s": None}, "needs a --duration"),
    ({"duration_s": 0}, "above 0"),
    ({"daily": "25:00-26:00"}, "not a daily window"),
    ({"daily": "03:00-04:00", "timezone": "Mars/Olympus"}, "not a known time zone"),
])
def test_bad_silences_say_why(kwargs: dict[str, object], phrase: str) -> None:
    args: dict[str, object] = {"host": "bbs-01", "check": None, "now_ms": NOW,
                               "duration_s": 60.0, "reason": "maintenance"}
    args.update(kwargs)
    with pytest.raises(SilenceError, match=phrase):
        make_silence(**args)  # type: ignore[arg-type]


def test_daily_windows_in_a_time_zone_and_across_midnight() -> None:
    # 10:00 UTC is 19:00 in Tokyo.
    assert in_daily_window("18:30-19:30", NOW, "Asia/Tokyo")
    assert not in_daily_window("18:30-19:30", NOW, "UTC")
    assert in_daily_window("23:00-11:00", NOW, "UTC")
    assert not in_daily_window("11:00-23:00", NOW, "UTC")
    nightly = make_silence(host="bbs-01", check=None, now_ms=NOW, duration_s=None,
                           reason="nightly backup", daily="09:30-10:30")
    assert nightly.ends_ms is None and not nightly.expired(NOW + 10**12)
    assert nightly.active(NOW)
    assert not nightly.active(NOW + 3_600_000)
    assert nightly.active(NOW + 86_400_000)


def test_storage_lists_and_expires(redis_client: redis.Redis) -> None:
    keys = KeySpace("t:")
    short = make_silence(host="bbs-01", check=None, now_ms=NOW, duration_s=60, reason="short")
    long = make_silence(host="bbs-*", check="database", now_ms=NOW, duration_s=7200,
                        reason="長いメンテナンス")
    silences.add(redis_client, keys, short)
    silences.add(redis_client, keys, long)
    redis_client.hset(keys.silences(), "junk", "not json")
    assert [s.id for s in silences.load(redis_client, keys, NOW)] == sorted(
        [short.id, long.id], key=lambda i: (NOW, i))
    assert redis_client.hexists(keys.silences(), "junk") == 0
    [left] = silences.load(redis_client, keys, NOW + 120_000)
    assert left.reason == "長いメンテナンス"
    assert redis_client.hlen(keys.silences()) == 1
    assert silences.remove(redis_client, keys, left.id)
    assert not silences.remove(redis_client, keys, left.id)
