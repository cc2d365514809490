"""Reports written as differences leave exactly the hash a whole write leaves.

``collector.hostwrite`` sends only what changed since a host's last report;
these tests check, on random report sequences and against the real
redis-server, that the hash ends up as ``wire.state.report_fields`` of the
newest report, whoever else wrote to it in between.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.hostwrite import ALWAYS_WRITTEN, HostWrites
from collector.keepalive import GRACE_FIELD, GRACE_FIELD_MS
from collector.scripts import STALE_SCRIPT, order_key
from wire.messages import Report
from wire.state import report_fields

ENTRY_MS = 1_795_000_000_000

# Values whose texts collide in naive comparisons: 1 == 1.0 == True, 0.0 == -0.0.
values = st.one_of(
    st.sampled_from([0, 1, 1.0, True, False, 0.0, -0.0, None, "", "ok", 2.5, 2.5004]),
    st.integers(-5, 5),
    st.floats(-3, 3, allow_nan=False, allow_infinity=False),
    st.just(({"client_id": "192.0.2.1:5000", "state": "connected"},)),
)
check_fields = st.dictionaries(st.sampled_from(["a", "b", "c", "size_mb", "sessions"]), values,
                               max_size=4)
checks = st.dictionaries(
    st.sampled_from(["database", "disk_space", "memory", "sessions"]),
    st.builds(lambda healthy, fields: {"healthy": healthy, **fields}, st.booleans(),
              check_fields),
    max_size=4)


def make(seq: int, checks: dict[str, dict[str, Any]], version: str = "0.1.0",
         interval: float = 60.0, epoch: int = 1) -> Report:
    return Report(host="bbs-01", agent_version=version, epoch=epoch, seq=seq,
                  observed_at=1_795_000_000.0 + seq, checks=checks, interval=interval)


def expected(report: Report, entry_ms: int) -> dict[str, str]:
    fields = report_fields(report, entry_ms)
    fields["report_status"] = fields["status"]
    return fields


def apply(hash_: dict[str, str], write: Any) -> dict[str, str]:
    """What Redis does with a write (the script's DEL, HDEL and HSET)."""
    result = {} if write.base == "" else dict(hash_)
    if write.base and result.get("stale") != "no":  # the sweep marked the host since
        result.update(stale="no", status=write.status)
    for name in write.deleted:
        result.pop(name, None)
    result.update(zip(write.pairs[0::2], write.pairs[1::2], strict=True))
    return result


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(checks, st.sampled_from(["0.1.0", "0.2.0"]),
                          st.sampled_from([60.0, 300.0, 60]), st.sampled_from([1, 1, 2])),
                min_size=1, max_size=12))
def test_differences_add_up_to_the_whole_hash(sequence: list[Any]) -> None:
    writes = HostWrites(full_every=5)
    stored: dict[str, str] = {}
    bases = []
    for seq, (report_checks, version, interval, epoch) in enumerate(sequence, start=1):
        report = make(seq, report_checks, version, interval, epoch)
        write = writes.plan(report, ENTRY_MS + seq, order_key(epoch, seq))
        bases.append(write.base)
        stored = apply(stored, write)
        assert stored == expected(report, ENTRY_MS + seq)
    # The first write and every fifth after it are whole; the others build on
    # the write before them.
    assert [b == "" for b in bases] == [i % 5 == 0 for i in range(len(sequence))]
    keys = [order_key(epoch, seq) for seq, (*_, epoch) in enumerate(sequence, start=1)]
    assert all(b == keys[i - 1] for i, b in enumerate(bases) if b)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_differences_of_reports_alike_add_up_to_the_whole_hash(data: Any) -> None:
    # An agent's reports mostly keep their checks and fields and change some
    # values; now and then a value changes type or a field comes or goes.
    layout = data.draw(checks.filter(bool))
    writes = HostWrites(full_every=1000)
    stored: dict[str, str] = {}
    current = {name: dict(fields) for name, fields in layout.items()}
    for seq in range(1, data.draw(st.integers(2, 10)) + 1):
        for fields in current.values():
            for key in list(fields):
                move = data.draw(st.sampled_from(["keep", "keep", "alike", "alike", "any",
                                                  "drop"]))
                if move == "alike" and type(fields[key]) in (int, float):
                    fields[key] = type(fields[key])(data.draw(st.integers(-3, 3)))
                elif move == "any":
                    fields[key] = data.draw(values)
                elif move == "drop" and key != "healthy":
                    del fields[key]
        report = make(seq, {name: dict(fields) for name, fields in current.items()})
        write = writes.plan(report, ENTRY_MS + seq, order_key(1, seq))
        assert (seq == 1) == (write.base == "")
        stored = apply(stored, write)
        assert stored == expected(report, ENTRY_MS + seq)


def test_equal_values_of_another_type_or_sign_are_rewritten() -> None:
    # 1 == 1.0 == True and 0.0 == -0.0, but each has its own text.
    writes = HostWrites()
    stored: dict[str, str] = {}
    for seq, value in enumerate([1, 1.0, True, 0.0, -0.0, 0, False, None, ""], start=1):
        report = make(seq, {"disk_space": {"healthy": True, "free_gb": value}})
        write = writes.plan(report, ENTRY_MS + seq, order_key(1, seq))
        stored = apply(stored, write)
        assert stored == expected(report, ENTRY_MS + seq), value
        assert (seq == 1) == (write.base == "")


def test_a_difference_sends_only_what_changed() -> None:
    writes = HostWrites()
    base: dict[str, dict[str, Any]] = {
        "database": {"healthy": True, "size_mb": 5.23, "path": "data/mtbbs.db"},
        "disk_space": {"healthy": True, "percent_used": 50.1, "free_gb": 249.5}}
    writes.plan(make(1, base), ENTRY_MS, order_key(1, 1))
    changed = {"database": dict(base["database"]),
               "disk_space": {"healthy": True, "percent_used": 50.2}}
    write = writes.plan(make(2, changed), ENTRY_MS + 1, order_key(1, 2))
    sent = dict(zip(write.pairs[0::2], write.pairs[1::2], strict=True))
    assert write.base == order_key(1, 1)
    assert write.deleted == ["disk_space.free_gb"]
    assert "database.size_mb" not in sent and "agent_version" not in sent
    assert sent["disk_space.percent_used"] == "50.2"
    assert sent["seq"] == "2"
    # Neither changed: the script writes them only over a hash the sweep
    # marked stale since (apply does what it does).
    assert "stale" not in sent and "status" not in sent and write.status == "OK"
    # Every field of every report is sent, whether the meta was recomputed
    # whole (version changed) or only its changing part (all else alike).
    for seq, version in ((3, "0.1.0"), (4, "0.2.0")):
        write = writes.plan(make(seq, changed, version), ENTRY_MS + seq, order_key(1, seq))
        assert set(ALWAYS_WRITTEN) <= set(write.pairs[0::2])


def test_forgotten_and_overflowing_hosts_are_written_whole() -> None:
    writes = HostWrites(max_hosts=2)
    assert writes.plan(make(1, {}), ENTRY_MS, order_key(1, 1)).base == ""
    assert writes.plan(make(2, {}), ENTRY_MS, order_key(1, 2)).base == order_key(1, 1)
    writes.forget("bbs-01")
    assert writes.plan(make(3, {}), ENTRY_MS, order_key(1, 3)).base == ""
    other = Report(host="bbs-02", agent_version="0.1.0", epoch=1, seq=1,
                   observed_at=1_795_000_000.0, checks={})
    writes.plan(other, ENTRY_MS, order_key(1, 1))
    third = Report(host="bbs-03", agent_version="0.1.0", epoch=1, seq=1,
                   observed_at=1_795_000_000.0, checks={})
    writes.plan(third, ENTRY_MS, order_key(1, 1))
    assert len(writes) <= 2


def _hash(client: redis.Redis, key: str) -> dict[str, str]:
    stored: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in stored.items()}


def test_the_stored_hash_equals_a_whole_write(redis_client: redis.Redis, keys: Any,
                                              publish: Any, report: Any,
                                              make_collector: Any) -> None:
    collector = make_collector()
    for seq, (disk, sessions) in enumerate([(50.1, 3), (50.1, 4), (91.0, 4), (0.0, 0)],
                                           start=1):
        sent = report("bbs-01", seq, disk=disk, sessions=sessions,
                      observed_at=1_795_000_000.0 + seq)
        entry_id = publish(sent)
        collector.drain()
        stored = _hash(redis_client, keys.host("bbs-01"))
        assert stored.pop("dropped_total") == "0"
        assert stored == expected(sent, int(entry_id.split(b"-")[0]))
    assert collector.counters.applied == 4


def test_what_other_writers_did_is_undone_or_rewritten(redis_client: redis.Redis, keys: Any,
                                                       publish: Any, report: Any,
                                                       make_collector: Any) -> None:
    host_key = keys.host("bbs-01")
    collector = make_collector()
    publish(report("bbs-01", 1, disk=50.0))
    collector.drain()
    # The sweep marks the host stale and a grace after an outage is recorded:
    # the next report (a difference) must clear both, as a whole write would.
    STALE_SCRIPT.load(redis_client)
    last_seen = redis_client.hget(host_key, "last_seen_ms")
    assert STALE_SCRIPT.call(redis_client, [host_key], [last_seen, "warning", "WARNING"]) == 1
    redis_client.hset(host_key, mapping={GRACE_FIELD_MS: "1", GRACE_FIELD: "x"})
    publish(report("bbs-01", 2, disk=50.0))
    collector.drain()
    stored = _hash(redis_client, host_key)
    assert stored["stale"] == "no" and stored["status"] == "OK"
    assert GRACE_FIELD_MS not in stored and GRACE_FIELD not in stored
    # Someone deletes the hash: the difference is refused and the whole hash sent.
    redis_client.delete(host_key)
    publish(report("bbs-01", 3, disk=51.0))
    collector.drain()
    stored = _hash(redis_client, host_key)
    assert stored["disk_space.total_gb"] == "500.0"
    assert stored["disk_space.percent_used"] == "51.0"
    # Another collector writes a newer report behind this one's back: this
    # one's next difference no longer fits and it writes whole again.
    other = make_collector(name="other")
    publish(report("bbs-01", 4, disk=52.0))
    other.drain()
    redis_client.hset(host_key, "database.size_mb", "hand-edited")
    publish(report("bbs-01", 5, disk=53.0))
    collector.drain()
    stored = _hash(redis_client, host_key)
    assert stored["seq"] == "5"
    assert stored["database.size_mb"] == "5.23"
    assert stored["disk_space.percent_used"] == "53.0"
    assert collector.counters.applied == 4 and other.counters.applied == 1
    assert not redis_client.xpending(keys.reports_stream(), "collectors")["pending"]


@given(st.integers(0, 2**64), st.integers(0, 2**64))
def test_ordering_keys_are_zero_padded_and_order_as_text(epoch: int, seq: int) -> None:
    key = order_key(epoch, seq)
    assert key == f"{epoch:020d}:{seq:020d}"
    assert (key < order_key(epoch, seq + 1)) and (key < order_key(epoch + 1, 0))


def test_checks_given_as_other_mappings_are_written_alike() -> None:
    # Decoded reports hold dicts; a report built by hand may hold any mapping.
    plain = HostWrites()
    proxied = HostWrites()
    for seq, disk in enumerate([50.1, 50.2, 50.2], start=1):
        checks = {"disk_space": {"healthy": True, "percent_used": disk, "free_gb": 1}}
        wrapped = MappingProxyType({name: MappingProxyType(fields)
                                    for name, fields in checks.items()})
        expected_write = plain.plan(make(seq, checks), ENTRY_MS + seq, order_key(1, seq))
        assert proxied.plan(make(seq, wrapped), ENTRY_MS + seq,
                            order_key(1, seq)) == expected_write


def test_hosts_with_the_same_checks_but_other_fields_get_their_own_names() -> None:
    # Whole writes take their field names from a cache shared by all hosts,
    # keyed by the checks' layout: names and order of the checks and fields.
    writes = HostWrites()
    layouts = [{"disk_space": {"healthy": True, "free_gb": 2.5}},
               {"disk_space": {"healthy": True, "percent_used": 50.1}},
               {"disk_space": {"percent_used": 50.1, "healthy": True}},
               {"memory": {"healthy": True, "free_gb": 2.5}}]
    for number, report_checks in enumerate(layouts):
        report = Report(host=f"bbs-{number}", agent_version="0.1.0", epoch=1, seq=1,
                        observed_at=1_795_000_000.0, checks=report_checks)
        write = writes.plan(report, ENTRY_MS, order_key(1, 1))
        assert write.base == ""
        assert apply({}, write) == expected(report, ENTRY_MS)
        assert write.pairs[-4::2] == [f"{name}.{key}" for name, fields in report_checks.items()
                                      for key in fields]


def test_the_same_field_names_split_otherwise_between_checks_are_another_layout() -> None:
    # The checks' field names, all in a row, are alike ("healthy", "x",
    # "healthy"); which check each belongs to is not.
    first = {"database": {"healthy": True, "x": 1}, "memory": {"healthy": True}}
    second = {"database": {"healthy": True}, "memory": {"x": 1, "healthy": True}}
    writes = HostWrites()
    stored: dict[str, str] = {}
    for seq, report_checks in enumerate([first, second, first], start=1):
        report = make(seq, report_checks)
        stored = apply(stored, writes.plan(report, ENTRY_MS + seq, order_key(1, seq)))
        assert stored == expected(report, ENTRY_MS + seq)
    # A new host's whole write takes its names from the cache by layout.
    for number, report_checks in enumerate([first, second]):
        report = Report(host=f"bbs-{number + 10}", agent_version="0.1.0", epoch=1, seq=1,
                        observed_at=1_795_000_000.0, checks=report_checks)
        assert apply({}, writes.plan(report, ENTRY_MS, order_key(1, 1))) == expected(
            report, ENTRY_MS)
