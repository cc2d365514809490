"""The web page judges a collector stalled exactly as the status CLI does."""

from __future__ import annotations

import redis

from collector.selfmon import read_collectors
from collector.settings import CollectorSettings
from collector.status import alive_collectors
from collector.web.data import read_collector_rows
from wire.keys import KeySpace


def test_a_collector_at_its_stall_limit_is_alive_on_the_page_and_in_status(
        redis_client: redis.Redis) -> None:
    keys = KeySpace()
    settings = CollectorSettings()
    beat_ms = 1_800_000_000_000
    redis_client.zadd(keys.collectors_index(), {"c1": beat_ms})
    redis_client.hset(keys.collector("c1"), mapping={"state": "running"})
    limit_ms = int(settings.stall_after_s * 1000)
    for now_ms, stalled in ((beat_ms + limit_ms, False), (beat_ms + limit_ms + 1, True)):
        [row] = read_collector_rows(redis_client, keys, settings, now_ms)
        views = read_collectors(redis_client, keys, now_ms)
        assert row["stalled"] is stalled
        assert (alive_collectors(views, settings) == []) is stalled
