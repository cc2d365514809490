"""The due index of the keepalive: a sweep judges only the hosts whose moment
has come, a page a step, against the real redis-server.

Each report schedules its host for the moment it would turn stale; a
:class:`keepalive.Sweeper` reads only what is due, reschedules what it judged
and drops a host at CRITICAL until it reports again. These tests hold the
costs that design promises (a healthy fleet's pass reads no host hash, no
step judges more than a page) and the answers it must still give (every
silent host marked once, hosts of other collectors left to them, hosts
without a due entry found by the first pass, an outage's grace given before
any judging).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis

from collector import keepalive
from collector.ingest import Collector
from wire.keys import KeySpace
from wire.messages import encode
from wire.replies import server_time_ms, text
from wire.state import STALE_CRITICAL, STALE_NO, STALE_WARNING

# Report intervals of the fleets below; the default thresholds are 3 and 5
# intervals, so a host that reported at t is due at t + 180 s + 1 ms.
INTERVAL_S = 60.0
WARNING_MS = 180_000
CRITICAL_MS = 300_000
# Hosts that report seldom: nowhere near due within the tests' judged moments.
SLOW_INTERVAL_S = 600.0


def host_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{index:05d}" for index in range(count)]


def report_all(publish: Any, report: Any, collector: Collector, hosts: Sequence[str],
               interval: float = INTERVAL_S, seq: int = 1) -> None:
    for host in hosts:
        publish(report(host, seq, interval=interval))
    collector.drain()


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``);
    commands run by scripts count too."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def calls_since(client: redis.Redis, before: dict[str, int]) -> dict[str, int]:
    after = command_calls(client)
    # INFO itself is how we look: not the sweep's.
    return {name: count - before.get(name, 0) for name, count in after.items()
            if count != before.get(name, 0) and name != "info"}


def scores(client: redis.Redis, key: str) -> dict[str, int]:
    entries: Any = client.zrange(key, 0, -1, withscores=True)
    return {text(member): int(score) for member, score in entries}


def stale_levels(client: redis.Redis, keys: KeySpace, hosts: Sequence[str]) -> dict[str, str]:
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        pipe.hget(keys.host(host), "stale")
    return {host: (value or b"").decode()
            for host, value in zip(hosts, pipe.execute(), strict=True)}


def no_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests judge at moments minutes after the hosts' reports, on a
    # Redis that started seconds ago: that would read as an outage and
    # grant a grace, which is tested on its own below.
    monkeypatch.setattr(keepalive, "detect_outage", lambda *args, **kwargs: None)


def spy_rows(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The hosts each read of host hashes by the sweep asked for, in order."""
    reads: list[list[str]] = []
    read_rows = keepalive._rows

    def recorded(client: Any, keys: KeySpace, hosts: Sequence[str]) -> Any:
        reads.append(list(hosts))
        return read_rows(client, keys, hosts)

    monkeypatch.setattr(keepalive, "_rows", recorded)
    return reads


def whole_pass(sweeper: keepalive.Sweeper, client: redis.Redis, now_ms: int,
               owns: Callable[[str], bool] | None = None,
               steps: int = 200) -> list[keepalive.Transition]:
    """``sweeper.sweep``, but a pass that does not end within ``steps`` fails
    the test rather than hanging it (a write that does not reschedule its
    host leaves it due, and it is read again and again)."""
    made = sweeper.step(client, now_ms, owns)
    for _ in range(steps):
        if not sweeper.busy:
            return made
        made += sweeper.step(client, now_ms, owns)
    raise AssertionError(f"the pass did not end within {steps} steps")


def test_a_healthy_fleets_pass_reads_no_host_hash(redis_client: redis.Redis, keys: KeySpace,
                                                  publish: Any, report: Any,
                                                  make_collector: Any) -> None:
    collector = make_collector()
    hosts = host_ids("bbs", 2000)
    report_all(publish, report, collector, hosts)
    # Each report scheduled its host in the same call that wrote it: due
    # when its silence passes three intervals.
    seen = scores(redis_client, keys.hosts_index())
    assert scores(redis_client, keys.hosts_due()) == {
        host: last + WARNING_MS + 1 for host, last in seen.items()}
    sweeper = keepalive.Sweeper(keys, collector.settings)

    # The first pass seeds the due index from the hosts index, but every
    # host is scheduled already: nothing moves, nothing is read.
    now_ms = server_time_ms(redis_client)
    before = command_calls(redis_client)
    assert whole_pass(sweeper, redis_client, now_ms) == []
    spent = calls_since(redis_client, before)
    assert "hmget" not in spent and "evalsha" not in spent
    assert scores(redis_client, keys.hosts_due()) == {
        host: last + WARNING_MS + 1 for host, last in seen.items()}

    # A later pass: the outage check and one empty read of the due index,
    # whatever the fleet's size.
    now_ms = server_time_ms(redis_client)
    before = command_calls(redis_client)
    assert whole_pass(sweeper, redis_client, now_ms) == []
    spent = calls_since(redis_client, before)
    assert "hmget" not in spent
    assert spent == {"zrangebyscore": 1}, spent


def test_a_fleet_going_silent_is_marked_a_page_a_step(
        redis_client: redis.Redis, keys: KeySpace, publish: Any, report: Any,
        make_collector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = make_collector()
    silent = host_ids("bbs", 1200)
    slow = host_ids("slow", 300)
    report_all(publish, report, collector, silent)
    report_all(publish, report, collector, slow, interval=SLOW_INTERVAL_S)
    seen = scores(redis_client, keys.hosts_index())
    last = max(seen[host] for host in silent)
    no_outage(monkeypatch)
    sweeper = keepalive.Sweeper(keys, collector.settings, page=100)
    assert whole_pass(sweeper, redis_client, last) == []  # the seeding pass: nobody due yet
    reads = spy_rows(monkeypatch)

    # Every silent host is past three intervals, none past five.
    warning_at = last + WARNING_MS + 1
    marked: list[str] = []
    steps = 0
    while steps < 50:
        before = len(reads)
        made = sweeper.step(redis_client, warning_at)
        steps += 1
        assert all(t.after == STALE_WARNING and t.before == STALE_NO for t in made)
        # A step judges one page at most and answers for that page only:
        # what it returns is exactly what Redis holds now beyond the steps
        # before it.
        assert sum(len(hosts) for hosts in reads[before:]) <= 100
        assert {t.host for t in made} <= {h for hosts in reads[before:] for h in hosts}
        marked += [t.host for t in made]
        levels = stale_levels(redis_client, keys, silent)
        assert sorted(h for h, level in levels.items() if level == STALE_WARNING) == \
            sorted(marked)
        if not sweeper.busy:
            break
    assert 12 <= steps <= 13
    assert sorted(marked) == silent  # each once
    assert set(stale_levels(redis_client, keys, slow).values()) == {STALE_NO}
    # Rescheduled for the next threshold; the slow hosts are left as they were.
    due = scores(redis_client, keys.hosts_due())
    assert {host: due[host] for host in silent} == {
        host: seen[host] + CRITICAL_MS + 1 for host in silent}
    assert {host: due[host] for host in slow} == {
        host: seen[host] + int(3 * SLOW_INTERVAL_S * 1000) + 1 for host in slow}

    # The same moment again: nothing is due, nothing read, nothing marked.
    del reads[:]
    assert whole_pass(sweeper, redis_client, warning_at) == []
    assert reads == []

    # Past five intervals: CRITICAL, and out of the due index (nothing can
    # change for them until they report).
    critical_at = last + CRITICAL_MS + 1
    made = whole_pass(sweeper, redis_client, critical_at)
    assert sorted(t.host for t in made) == silent
    assert {(t.before, t.after) for t in made} == {(STALE_WARNING, STALE_CRITICAL)}
    assert max(len(hosts) for hosts in reads) <= 100
    assert set(scores(redis_client, keys.hosts_due())) == set(slow)
    # Fifty minutes on (before the hourly seeding), only the slow hosts have
    # come due; the CRITICAL ones are not read again.
    del reads[:]
    made = whole_pass(sweeper, redis_client, critical_at + 3_000_000)
    assert sorted(t.host for t in made) == slow
    assert sorted(h for hosts in reads for h in hosts) == slow
    assert scores(redis_client, keys.hosts_due()) == {}

    # A report brings its host back: level cleared, due again in the future.
    report_all(publish, report, collector, silent[:1], seq=2)
    fields = redis_client.hgetall(keys.host(silent[0]))
    assert (fields[b"stale"], fields[b"status"]) == (b"no", b"OK")
    assert scores(redis_client, keys.hosts_due())[silent[0]] == \
        int(fields[b"last_seen_ms"]) + WARNING_MS + 1
    assert int(fields[b"last_seen_ms"]) + WARNING_MS + 1 > server_time_ms(redis_client)
    assert stale_levels(redis_client, keys, silent[1:2]) == {silent[1]: STALE_CRITICAL}


def test_hosts_of_other_collectors_are_left_due_to_them(
        redis_client: redis.Redis, keys: KeySpace, publish: Any, report: Any,
        make_collector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = make_collector()
    hosts = host_ids("bbs", 300)
    report_all(publish, report, collector, hosts)
    seen = scores(redis_client, keys.hosts_index())
    warning_at = max(seen.values()) + WARNING_MS + 1
    no_outage(monkeypatch)
    # Every third host is ours, so each page of the due index holds hosts of
    # both: the pages after the first start past the ones left over.
    mine = set(hosts[::3])

    def ours(host: str) -> bool:
        return host in mine

    def theirs(host: str) -> bool:
        return host not in mine

    reads = spy_rows(monkeypatch)
    made = whole_pass(keepalive.Sweeper(keys, collector.settings, page=40), redis_client,
                      warning_at, ours)
    assert sorted(t.host for t in made) == sorted(mine)
    assert {h for hosts in reads for h in hosts} == mine  # theirs not even read
    levels = stale_levels(redis_client, keys, hosts)
    assert {h for h, level in levels.items() if level == STALE_WARNING} == mine
    due = scores(redis_client, keys.hosts_due())
    # Theirs stay due as their reports scheduled them; ours are rescheduled.
    assert {h: due[h] for h in hosts if h not in mine} == {
        h: seen[h] + WARNING_MS + 1 for h in hosts if h not in mine}
    assert all(due[h] == seen[h] + CRITICAL_MS + 1 for h in mine)

    # Their owner's sweeper marks them.
    made = whole_pass(keepalive.Sweeper(keys, collector.settings, page=40), redis_client,
                      warning_at, theirs)
    assert sorted(t.host for t in made) == sorted(set(hosts) - mine)
    assert set(stale_levels(redis_client, keys, hosts).values()) == {STALE_WARNING}
    assert min(scores(redis_client, keys.hosts_due()).values()) > warning_at


def test_the_first_pass_schedules_hosts_without_a_due_entry(
        redis_client: redis.Redis, keys: KeySpace, publish: Any, report: Any,
        make_collector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = make_collector()
    unscheduled = host_ids("old", 150)
    slow = host_ids("slow", 30)
    report_all(publish, report, collector, unscheduled)
    # As an older collector left them: in the hosts index, not in the due index.
    redis_client.delete(keys.hosts_due())
    report_all(publish, report, collector, slow, interval=SLOW_INTERVAL_S)
    slow_due = scores(redis_client, keys.hosts_due())
    assert set(slow_due) == set(slow)
    seen = scores(redis_client, keys.hosts_index())
    warning_at = max(seen[h] for h in unscheduled) + WARNING_MS + 1
    no_outage(monkeypatch)

    # A small page: the hosts index (past the listpack size) is scanned in
    # several steps before anyone is judged.
    made = whole_pass(keepalive.Sweeper(keys, collector.settings, page=16), redis_client,
                      warning_at)
    assert sorted(t.host for t in made) == unscheduled
    assert set(stale_levels(redis_client, keys, unscheduled).values()) == {STALE_WARNING}
    due = scores(redis_client, keys.hosts_due())
    assert {h: due[h] for h in unscheduled} == {h: seen[h] + CRITICAL_MS + 1 for h in unscheduled}
    # Seeding does not move a host that is scheduled already.
    assert {h: due[h] for h in slow} == slow_due


def test_hosts_written_without_a_due_entry_later_are_scheduled_by_the_next_seeding(
        redis_client: redis.Redis, keys: KeySpace, publish: Any, report: Any,
        make_collector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = make_collector()
    no_outage(monkeypatch)
    sweeper = keepalive.Sweeper(keys, collector.settings, page=16)
    start = server_time_ms(redis_client)
    assert whole_pass(sweeper, redis_client, start) == []  # seeded: nothing there yet
    # An older collector, mid-upgrade, writes hosts without scheduling them.
    late = host_ids("late", 20)
    report_all(publish, report, collector, late)
    redis_client.zrem(keys.hosts_due(), *late)
    seen = scores(redis_client, keys.hosts_index())
    # Their silence passes the threshold: the next pass does not know them...
    warning_at = max(seen[h] for h in late) + WARNING_MS + 1
    assert warning_at - start < keepalive.RESEED_S * 1000
    assert whole_pass(sweeper, redis_client, warning_at) == []
    # ... the pass after the next seeding does.
    reseed_at = start + int(keepalive.RESEED_S * 1000)
    made = whole_pass(sweeper, redis_client, reseed_at)
    assert sorted(t.host for t in made) == late


def test_a_report_landing_mid_page_wins_and_the_pass_goes_on(
        redis_client: redis.Redis, keys: KeySpace, publish: Any, report: Any,
        make_collector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = make_collector()
    hosts = host_ids("bbs", 250)
    report_all(publish, report, collector, hosts)
    seen = scores(redis_client, keys.hosts_index())
    warning_at = max(seen.values()) + WARNING_MS + 1
    no_outage(monkeypatch)
    sweeper = keepalive.Sweeper(keys, collector.settings, page=100)
    assert whole_pass(sweeper, redis_client, warning_at - WARNING_MS) == []  # seeded

    read_rows = keepalive._rows
    reported: list[str] = []

    def half_the_second_page_reports(client: Any, keys: KeySpace, page: Sequence[str]) -> Any:
        rows = read_rows(client, keys, page)
        if not reported and any(reads_before):
            # Read, not yet written: every other host of this page reports now.
            reported.extend(page[::2])
            report_all(publish, report, collector, reported, seq=2)
        reads_before.append(list(page))
        return rows

    reads_before: list[list[str]] = []
    monkeypatch.setattr(keepalive, "_rows", half_the_second_page_reports)
    made = whole_pass(sweeper, redis_client, warning_at)
    assert len(reported) == 50
    quiet = sorted(set(hosts) - set(reported))
    assert sorted(t.host for t in made) == quiet
    levels = stale_levels(redis_client, keys, hosts)
    assert {h for h, level in levels.items() if level == STALE_WARNING} == set(quiet)
    due = scores(redis_client, keys.hosts_due())
    for host in reported:
        fields = redis_client.hgetall(keys.host(host))
        assert (fields[b"seq"], fields[b"stale"]) == (b"2", b"no")
        assert due[host] == int(fields[b"last_seen_ms"]) + WARNING_MS + 1
    assert all(due[h] == seen[h] + CRITICAL_MS + 1 for h in quiet)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def fleet_to_restart(redis_server_factory: Any, keys: KeySpace, report: Any,
                     make_collector: Any) -> tuple[Any, redis.Redis, list[str],
                                                   keepalive.Sweeper]:
    """A Redis that keeps its data over a restart, 300 hosts reported to it
    (stale at WARNING after 1.5 s of silence, CRITICAL after 2.5 s), and a
    sweeper of 50 hosts a page."""
    server = redis_server_factory("--appendonly", "yes", "--appendfsync", "always")
    client = server.client(socket_timeout=2, socket_connect_timeout=2)
    collector = make_collector(client=client, name="restart")
    hosts = host_ids("bbs", 300)
    for host in hosts:
        client.xadd(keys.reports_stream(host), {"m": encode(report(host, 1, interval=0.5))})
    collector.drain()
    return server, client, hosts, keepalive.Sweeper(keys, collector.settings, page=50)


def test_an_outages_grace_is_given_a_page_a_step_before_any_judging(
        redis_server_factory: Any, keys: KeySpace, report: Any, make_collector: Any) -> None:
    server, client, hosts, sweeper = fleet_to_restart(redis_server_factory, keys, report,
                                                      make_collector)
    assert whole_pass(sweeper, client, server_time_ms(client)) == []
    assert not sweeper.busy
    server.stop(signal.SIGKILL)
    time.sleep(2.7)  # the agents cannot report: every host past five intervals
    server.start()
    wait_until(lambda: answers(client))

    def graced() -> dict[str, int]:
        pipe = client.pipeline(transaction=False)
        for host in hosts:
            pipe.hget(keys.host(host), keepalive.GRACE_FIELD_MS)
        return {host: int(value) for host, value in zip(hosts, pipe.execute(), strict=True)
                if value is not None}

    progress: list[int] = []
    while len(progress) < 100:
        assert sweeper.step(client, server_time_ms(client)) == []
        # Nobody is judged stale while (nor after) the grace is given.
        assert set(stale_levels(client, keys, hosts).values()) == {STALE_NO}
        progress.append(len(graced()))
        if not sweeper.busy:
            break
    assert not sweeper.busy
    # A page at a time: some steps in which only part of the fleet had it.
    assert sum(1 for count in progress if 0 < count < len(hosts)) >= 2
    given = graced()
    assert set(given) == set(hosts)
    until = set(given.values())
    assert len(until) == 1 and until.pop() > server_time_ms(client)
    # Judged under the grace, each host is due again once its silence
    # counts: three intervals after the grace's end.
    due = scores(client, keys.hosts_due())
    assert {due[h] for h in hosts} == {given[hosts[0]] + 1501}


# -- a pass that others' judging or an outage interrupts


def test_a_pass_misses_none_of_its_hosts_when_others_leave_meanwhile(
        redis_client: redis.Redis, keys: KeySpace, publish: Any, report: Any,
        make_collector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = make_collector()
    theirs, ours = ["bbs-b1", "bbs-b2"], ["bbs-a1", "bbs-a2", "bbs-a3"]
    report_all(publish, report, collector, theirs + ours)
    seen = scores(redis_client, keys.hosts_index())
    last = max(seen.values())
    no_outage(monkeypatch)
    mine = keepalive.Sweeper(keys, collector.settings, page=2)
    other = keepalive.Sweeper(keys, collector.settings, page=2)
    assert whole_pass(mine, redis_client, last) == []  # both seeded: nobody due yet
    assert whole_pass(other, redis_client, last) == []
    # Due in this order: their two hosts first, then our three.
    redis_client.zadd(keys.hosts_due(), {host: last + order
                                         for order, host in enumerate(theirs + ours)})
    warning_at = last + WARNING_MS + 1

    made = mine.step(redis_client, warning_at, lambda host: host in ours)
    assert made == [] and mine.busy  # a page of theirs, passed over
    assert len(whole_pass(other, redis_client, warning_at, lambda host: host in theirs)) == 2
    while mine.busy:
        made += mine.step(redis_client, warning_at, lambda host: host in ours)
    assert sorted(t.host for t in made) == ours


def test_a_restart_in_the_middle_of_a_pass_still_grants_the_grace(
        redis_server_factory: Any, keys: KeySpace, report: Any, make_collector: Any) -> None:
    server, client, hosts, sweeper = fleet_to_restart(redis_server_factory, keys, report,
                                                      make_collector)
    # The first page of a new sweeper's seeding: the pass is under way.
    assert sweeper.step(client, server_time_ms(client)) == []
    assert sweeper.busy
    server.stop(signal.SIGKILL)
    time.sleep(2.7)  # the agents cannot report: every host past five intervals
    server.start()
    wait_until(lambda: answers(client))
    made: list[keepalive.Transition] = []
    for _ in range(100):
        if not sweeper.busy:
            break
        made += sweeper.step(client, server_time_ms(client))
    assert made == []
