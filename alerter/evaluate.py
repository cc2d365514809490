"""Evaluating hosts: host state → rules → alert transitions → buffered notices.

The common case is cheap: one pipelined round trip reads the clock, the
silences, every host's state and every alert hash of the batch, and the
state machine runs on that snapshot. Most evaluations change nothing (a
healthy host with a clean history) and write nothing. Only a host with a
change goes through a transaction: WATCH on its changed alert hashes,
re-read, re-decide, then MULTI with the new states, the notices pushed into
the channels' digest buffers and the log lines. If another worker moved one
of those alerts meanwhile, EXEC fails and the host is decided again on the
fresh state, so two workers cannot both fire the same alert.

The host state is read outside the WATCH: it changes with every report,
and deciding on a report a few milliseconds old is harmless (the next report
is evaluated again).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import WatchError

from alerter import silences as silence_store
from alerter.dispatch import drain, log_entry, now_ms, push_log
from alerter.notify import Notification
from alerter.rules import OK, Evaluation, Rule, collect_figures, evaluate_rule
from alerter.state import (
    FIRING_NOTICE,
    FLAPPING_NOTICE,
    REPEAT_NOTICE,
    RESOLVED_NOTICE,
    AlertState,
    Notice,
    alert_member,
    step,
)
from wire.keys import valid_host_id
from wire.state import STALE_NO, HostState, parse_host_state

if TYPE_CHECKING:
    from alerter.context import AlerterContext

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 10

# KEYS: n pending marks, n host hashes, then alert hashes. ARGV: n, fields.
_READ_BATCH = """
local n = tonumber(ARGV[1])
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
local hosts, alerts = {}, {}
for i = 1, n do redis.call('DEL', KEYS[i]) end
for i = 1, n do hosts[i] = redis.call('HMGET', KEYS[n + i], unpack(fields)) end
for i = 2 * n + 1, #KEYS do alerts[#alerts + 1] = redis.call('HGETALL', KEYS[i]) end
return {hosts, alerts}
"""


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@dataclass
class Outcome:
    """What evaluating a batch did (for job results, logs and tests)."""

    hosts: int = 0
    missing: int = 0
    dropped: int = 0  # alert states of forgotten hosts deleted
    transitions: int = 0
    notices: list[str] = field(default_factory=list)
    channels: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the rq job result."""
        return {"hosts": self.hosts, "missing": self.missing, "dropped": self.dropped,
                "transitions": self.transitions, "notices": self.notices}


def _decide(rule: Rule, applies: bool, host_state: HostState, prev: AlertState, now: int,
            silences: Sequence[silence_store.Silence]
            ) -> tuple[AlertState, list[Notice], Evaluation]:
    stale = host_state.stale not in ("", STALE_NO)
    if applies:
        evaluation = evaluate_rule(rule, host_state)
    else:
        evaluation = Evaluation(level=OK, summary="the rule no longer applies to this host")
    silenced = silence_store.matching(silences, host_state.host, rule.name, now) is not None
    new, notices = step(prev, evaluation, rule, host=host_state.host, now_ms=now,
                        mark=f"{host_state.last_seen_ms}:{host_state.stale}",
                        silenced=silenced,
                        inhibited=applies and stale and not rule.reads_staleness)
    return new, notices, evaluation


def _notification(notice: Notice, rule: Rule, host_state: HostState, new: AlertState,
                  prev: AlertState, evaluation: Evaluation, now: int) -> Notification:
    if notice.kind == RESOLVED_NOTICE:
        summary = f"back to normal; was: {prev.breach_summary or 'a breach'}"
    elif notice.kind in (FIRING_NOTICE, REPEAT_NOTICE, FLAPPING_NOTICE):
        summary = evaluation.summary if evaluation.level > OK else new.breach_summary
    else:
        summary = f"settled: {evaluation.summary}"
    return Notification(
        id=notice.id, kind=notice.kind, host=host_state.host, check=rule.name,
        severity=notice.severity, summary=summary, since_ms=notice.since_ms, at_ms=now,
        figures=collect_figures(rule, host_state), hint=rule.hint, state=new.state,
        flap_percent=new.flap_percent, repeats=new.repeats,
        host_status=host_state.status.name,
    )


def _commit_host(ctx: AlerterContext, host_state: HostState,
                 rules: Sequence[tuple[Rule, bool]], silences: Sequence[silence_store.Silence],
                 outcome: Outcome) -> None:
    client, keys, s = ctx.client, ctx.keys, ctx.settings
    host = host_state.host
    alert_keys = [keys.alert(host, rule.name) for rule, _ in rules]
    with client.pipeline() as pipe:
        for _ in range(MAX_ATTEMPTS):
            try:
                pipe.watch(*alert_keys)
                # Reads after WATCH may use another connection: any change
                # made after the WATCH still fails our EXEC.
                reader = client.pipeline(transaction=False)
                reader.time()
                for key in alert_keys:
                    reader.hgetall(key)
                seconds_micros, *raws = reader.execute()
                now = int(seconds_micros[0]) * 1000 + int(seconds_micros[1]) // 1000
                writes: list[tuple[str, Rule, AlertState]] = []
                notes: list[tuple[Notification, bool]] = []
                for (rule, applies), key, raw in zip(rules, alert_keys, raws, strict=True):
                    prev = AlertState.from_hash(raw)
                    new, notices, evaluation = _decide(rule, applies, host_state, prev, now,
                                                       silences)
                    if new != prev:
                        writes.append((key, rule, new))
                    for notice in notices:
                        notes.append((_notification(notice, rule, host_state, new, prev,
                                                    evaluation, now), notice.suppressed))
                pipe.multi()
                for key, rule, new in writes:
                    pipe.hset(key, mapping=new.to_hash(host, rule.name, now))
                    pipe.sadd(keys.alerts_index(), alert_member(host, rule.name))
                    if new.quiet:
                        pipe.expire(key, s.resolved_ttl)
                    else:
                        pipe.persist(key)
                entries: list[str] = []
                touched: set[str] = set()
                for note, suppressed in notes:
                    if suppressed:
                        silence = silence_store.matching(silences, host, note.check, now)
                        held_by = silence.id if silence else "?"
                        entries.append(log_entry(now, "suppressed", note=note,
                                                 detail=f"silence {held_by}"))
                        continue
                    channels = ctx.policy.route(host, note.check, note.severity, note.kind,
                                                ctx.channels)
                    if not channels:
                        entries.append(log_entry(now, "unrouted", note=note,
                                                 detail="no configured channel takes it"))
                        continue
                    data = json.dumps(note.to_dict(), ensure_ascii=False)
                    for channel in channels:
                        pipe.rpush(keys.digest_buffer(channel), data)
                        entries.append(log_entry(now, "queued", channel=channel, note=note))
                        touched.add(channel)
                push_log(pipe, ctx, entries)
                pipe.execute()
            except WatchError:
                continue
            outcome.transitions += len(writes)
            outcome.notices.extend(f"{n.id}{' (suppressed)' if sup else ''}" for n, sup in notes)
            outcome.channels |= touched
            for note, suppressed in notes:
                logger.info("%s %s %s: %s%s", note.kind, host, note.check, note.summary,
                            " (silenced)" if suppressed else "")
            return
    logger.warning("%s: alert states too contended to update now; the next evaluation "
                   "will", host)


def drop_alert_states(ctx: AlerterContext, host: str, checks: Iterable[str] = ()) -> int:
    """Delete every alert state of ``host`` (those of ``checks`` and all the index
    lists, rules removed since included); the number of states deleted."""
    client, keys = ctx.client, ctx.keys
    names = dict.fromkeys(checks)
    # Host ids hold no glob characters (wire.keys.HOST_ID_PATTERN).
    for member in client.sscan_iter(keys.alerts_index(), match=f"{host}/*"):
        text = member.decode() if isinstance(member, bytes) else str(member)
        names.setdefault(text.partition("/")[2], None)
    if not names:
        return 0
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(*(keys.alert(host, name) for name in names))
        pipe.srem(keys.alerts_index(), *(alert_member(host, name) for name in names))
        deleted, _ = pipe.execute()
    if deleted:
        logger.info("%s: no host state any more; dropped its alert states (%s)", host,
                    ", ".join(names))
    return int(deleted)


def evaluate_hosts(ctx: AlerterContext, hosts: Iterable[str], *, drain_channels: bool = True
                   ) -> Outcome:
    """Evaluate ``hosts`` (deduplicated, invalid ids skipped) and send what they decide."""
    outcome = Outcome()
    wanted = list(dict.fromkeys(h for h in hosts if isinstance(h, str) and valid_host_id(h)))
    if not wanted:
        return outcome
    client, keys = ctx.client, ctx.keys
    plans = [(host, ctx.policy.rules_for(host)) for host in wanted]
    # Only the fields the rules read: most evaluations end here, and a host
    # hash holds several times more. A host with a change is read whole.
    fields = ctx.policy.fields
    alert_keys = [keys.alert(host, rule.name) for host, rules in plans for rule, _ in rules]
    reader = client.pipeline(transaction=False)
    reader.time()
    reader.hgetall(keys.silences())
    # One script reads the whole batch: a command per key would cost more in
    # the client than the evaluation itself. It deletes the pending marks
    # first thing, so a report arriving from now on enqueues a new evaluation
    # instead of being folded into this one.
    reader.eval(_READ_BATCH, 2 * len(plans) + len(alert_keys),
                *(keys.evaluation_pending(host) for host, _ in plans),
                *(keys.host(host) for host, _ in plans), *alert_keys, len(plans), *fields)
    clock, raw_silences, (host_raws, flat_alerts) = reader.execute()
    now = int(clock[0]) * 1000 + int(clock[1]) // 1000
    silences = [s for s in silence_store.parse_all(raw_silences) if not s.expired(now)]
    alert_raws = iter(_pairs(flat) for flat in flat_alerts)
    for (host, rules), values in zip(plans, host_raws, strict=True):
        raws = [next(alert_raws) for _ in rules]
        if values[fields.index("last_seen_ms")] is None:
            outcome.missing += 1
            if not client.exists(keys.host(host)):
                # The host was forgotten (its state deleted): so are its alerts.
                stored = [rule.name for (rule, _), raw in zip(rules, raws, strict=True) if raw]
                outcome.dropped += drop_alert_states(ctx, host, stored)
            continue
        outcome.hosts += 1
        host_state = parse_host_state(host, {f: v for f, v in zip(fields, values, strict=True)
                                             if v is not None})
        stale = host_state.stale not in ("", STALE_NO)
        changed = []
        for (rule, applies), raw in zip(rules, raws, strict=True):
            if not raw and (not applies or (stale and not rule.reads_staleness)):
                continue  # nothing stored, nothing to judge
            if not raw and evaluate_rule(rule, host_state).level == OK:
                continue  # never breached and fine now: the common case
            prev = AlertState.from_hash(raw)
            new, notices, _ = _decide(rule, applies, host_state, prev, now, silences)
            if new != prev or notices:
                changed.append((rule, applies))
        if changed:
            full = parse_host_state(host, client.hgetall(keys.host(host)))
            _commit_host(ctx, full, changed, silences, outcome)
    if drain_channels:
        for channel in sorted(outcome.channels):
            drain(ctx, channel)
    return outcome


def active_hosts(ctx: AlerterContext) -> list[str]:
    """Hosts with an alert that time alone can move (pending, firing, flapping, unsent)."""
    client, keys = ctx.client, ctx.keys
    members = [m.decode() if isinstance(m, bytes) else str(m)
               for m in client.smembers(keys.alerts_index())]
    if not members:
        return []
    pipe = client.pipeline(transaction=False)
    pairs = []
    for member in members:
        host, _, check = member.partition("/")
        pairs.append((member, host))
        pipe.hmget(keys.alert(host, check), "state", "flapping", "notified")
    gone = []
    hosts: dict[str, None] = {}
    for (member, host), (state, flapping, notified) in zip(pairs, pipe.execute(), strict=True):
        if state is None:
            gone.append(member)
            continue
        if state in (b"pending", b"firing") or flapping == b"yes" or \
                (notified or b"ok") != b"ok":
            hosts.setdefault(host, None)
    if gone:
        client.srem(keys.alerts_index(), *gone)
    return list(hosts)


def tick(ctx: AlerterContext, batch: int = 200) -> int:
    """Re-evaluate every host with an active alert; the number of hosts."""
    hosts = active_hosts(ctx)
    for start in range(0, len(hosts), batch):
        evaluate_hosts(ctx, hosts[start:start + batch])
    return len(hosts)


__all__ = ["Outcome", "active_hosts", "evaluate_hosts", "now_ms", "tick"]
