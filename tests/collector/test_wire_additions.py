"""What the collector added to the wire contract."""

from __future__ import annotations

from rq.serializers import JSONSerializer, resolve_serializer

from wire.keys import RQ_SERIALIZER, KeySpace


def test_rq_serializer_is_json() -> None:
    assert resolve_serializer(RQ_SERIALIZER) is JSONSerializer


def test_sessions_order_key() -> None:
    assert KeySpace().host_sessions_order("bbs-01") == "mtbbs:host:bbs-01:sessions:order"
    assert KeySpace("x:").host_sessions_order("h") == "x:host:h:sessions:order"
