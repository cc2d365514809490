"""A ``logged_in`` event is stored with the user it carries: none is not "guest"."""

from __future__ import annotations

import json
import time
from typing import Any

import redis


def stored_sessions(client: redis.Redis, keys: Any, host: str = "bbs-01") -> dict[str, Any]:
    return {k.decode(): json.loads(v) for k, v in client.hgetall(keys.host_sessions(host)).items()}


def test_a_login_without_a_user_is_stored_without_one(
        redis_client: redis.Redis, keys: Any, publish: Any, event: Any,
        make_collector: Any) -> None:
    publish(event("connected", 1, client_id="192.0.2.1:5000", connected_at=time.time() - 5))
    publish(event("logged_in", 2, client_id="192.0.2.1:5000", state="logged_in"))
    make_collector().drain()
    session = stored_sessions(redis_client, keys)["192.0.2.1:5000"]
    assert session["state"] == "logged_in"
    assert session["user_id"] is None


def test_a_login_without_a_user_keeps_the_user_the_session_already_had(
        redis_client: redis.Redis, keys: Any, publish: Any, event: Any,
        make_collector: Any) -> None:
    publish(event("connected", 1, client_id="192.0.2.1:5000", user_id="taro"))
    publish(event("logged_in", 2, client_id="192.0.2.1:5000"))
    make_collector().drain()
    assert stored_sessions(redis_client, keys)["192.0.2.1:5000"]["user_id"] == "taro"
