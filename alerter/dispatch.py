"""From decided notices to delivered messages: buffers, storm control, dedup, failures.

Flow, per channel:

1. The evaluation transaction that moves an alert also appends its notice
   to the channel's buffer ``KeySpace.digest_buffer(channel)`` (same MULTI:
   a transition is never committed without its notice, nor the reverse).
2. :func:`drain` then looks at the channel: when nothing was sent within the
   digest window and the rate limit allows, it takes up to ``digest_max``
   notices off the buffer *and* enqueues one delivery job for them in one
   transaction (WATCH/MULTI; rq's enqueue joins the pipeline). Otherwise it
   schedules one flush job (:func:`alerter.jobs.flush_channel`) at the end of
   the window or rate period, marked by ``KeySpace.digest_due(channel)`` so
   that a storm schedules one flush, not one per alert. Everything that piles
   up meanwhile leaves as one digest. The first alert after a quiet spell
   goes out at once.
3. The delivery job (:func:`alerter.jobs.deliver`) claims each notice's
   dedup key ``KeySpace.notification_sent("<channel>/<id>")`` with SET NX and
   a lease, sends, and only then marks the keys sent. A retry or a second
   job finding a key marked skips that notice; a re-run of the same rq job
   (its worker died) takes its own claim over. A crash between the send and
   the mark re-sends once: delivery is at least once, never silently lost.
4. Temporary errors return an rq ``Retry`` with the configured capped
   intervals (or the server's Retry-After), never run early (see
   :func:`rq_retry_intervals`); permanent errors, and temporary
   ones once the retries are spent, are recorded in
   ``KeySpace.notifications_failed()`` for ``mtbbs-alerter failed``.

Every step leaves a JSON line in ``KeySpace.notification_log()``.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import WatchError
from rq import Queue, Retry

from alerter.notify import DeliveryError, Notification
from wire.keys import RQ_SERIALIZER
from wire.replies import server_time_ms as now_ms
from wire.state import iso_from_ms, plural

if TYPE_CHECKING:
    from alerter.context import AlerterContext

logger = logging.getLogger(__name__)

DELIVER_JOB = "alerter.jobs.deliver"
FLUSH_JOB = "alerter.jobs.flush_channel"
# A scheduled flush that has not run this long after its due time is presumed
# lost (its scheduler died); the guard then lapses and the next drain, or a
# worker's maintenance round, schedules again.
DUE_GRACE_MS = 15_000
RESULT_TTL = 600
FAILURE_TTL = 7 * 86400

_CLAIM = """
local out = {}
local mine = 'sending:' .. ARGV[1]
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    redis.call('SET', key, mine, 'PX', ARGV[2])
    out[i] = 1
  elseif v == mine then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  elseif string.sub(v, 1, 5) == 'sent:' then
    out[i] = 2
  else
    out[i] = 3
  end
end
return out
"""

_RELEASE = """
local mine = 'sending:' .. ARGV[1]
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == mine then redis.call('DEL', key) end
end
return 1
"""

CLAIMED, ALREADY_SENT, IN_FLIGHT = 1, 2, 3


def rq_retry_intervals(seconds: Sequence[int]) -> list[int]:
    """The intervals to give rq's Retry so that no retry runs before its delay.

    rq schedules a retry at "now + interval" but keeps the time in whole
    seconds, truncated: a 1 s retry could run 0.1 s later. One second more
    makes every retry wait at least its configured delay (and less than a
    second beyond it). 0 stays 0: rq re-queues at once.
    """
    return [delay + 1 if delay > 0 else 0 for delay in seconds]


def dedup_id(channel: str, notification_id: str) -> str:
    """The dedup identity of a notification on one channel."""
    return f"{channel}/{notification_id}"


def log_entry(at_ms: int, outcome: str, *, channel: str = "", note: Notification | None = None,
              detail: str = "", delivery: str = "") -> str:
    """One JSON line of the notification log."""
    entry: dict[str, Any] = {"at": iso_from_ms(at_ms), "at_ms": at_ms, "outcome": outcome}
    if channel:
        entry["channel"] = channel
    if note is not None:
        entry.update(id=note.id, kind=note.kind, host=note.host, check=note.check,
                     severity=note.severity)
    if delivery:
        entry["delivery"] = delivery
    if detail:
        entry["detail"] = detail
    return json.dumps(entry, ensure_ascii=False, sort_keys=True)


def push_log(pipe: Any, ctx: AlerterContext, entries: Sequence[str]) -> None:
    """Queue log lines (newest first) on a pipeline."""
    if entries:
        key = ctx.keys.notification_log()
        pipe.lpush(key, *entries)
        pipe.ltrim(key, 0, ctx.settings.log_length - 1)


def queue(ctx: AlerterContext, name: str) -> Queue:
    """An rq queue of ours with the project's serializer."""
    return Queue(name, connection=ctx.client, serializer=RQ_SERIALIZER)


def new_delivery_id(at_ms: int) -> str:
    """A delivery id: the time (so ids sort by age) and a random tail."""
    return f"{at_ms}-{secrets.token_hex(3)}"


def enqueue_delivery(ctx: AlerterContext, channel: str, delivery: dict[str, Any],
                     pipeline: Any = None, job_id: str | None = None) -> Any:
    """Enqueue the delivery job (on ``pipeline`` when given, joining its transaction)."""
    s = ctx.settings
    return queue(ctx, ctx.keys.notify_queue()).enqueue_call(
        DELIVER_JOB, args=(channel, delivery),
        job_id=job_id or f"{channel}-{delivery['id']}",
        timeout=s.delivery_timeout, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
        description=f"deliver {len(delivery['notifications'])} notification(s) by {channel}",
        # Only a worker's death makes rq itself retry (our job never raises):
        # re-run at once, the claim of the dead run is ours to take over.
        retry=Retry(max=s.abandoned_retries, interval=0),
        pipeline=pipeline,
    )


def drain(ctx: AlerterContext, channel: str) -> str:
    """Send what a channel's buffer holds now, or schedule the flush that will.

    Returns ``sent``, ``scheduled``, ``pending`` (a flush is already due) or
    ``empty``.
    """
    client = ctx.client
    keys, s = ctx.keys, ctx.settings
    buffer, rate, due = keys.digest_buffer(channel), keys.channel_rate(channel), \
        keys.digest_due(channel)
    period_ms, window_ms = s.rate_period * 1000, s.digest_window * 1000
    outcome = "empty"
    # rq reads the server version once per queue; do it before any WATCH.
    notify_queue = queue(ctx, keys.notify_queue())
    notify_queue.get_redis_server_version()
    with client.pipeline() as pipe:
        for _ in range(50):
            try:
                pipe.watch(buffer, rate, due)
                if pipe.exists(due):
                    pipe.reset()
                    return "pending" if outcome == "empty" else outcome
                length = int(pipe.llen(buffer))
                if not length:
                    pipe.reset()
                    return outcome
                now = now_ms(pipe)
                sends = pipe.zrangebyscore(rate, now - period_ms, "+inf", withscores=True)
                delay = 0.0
                if sends:
                    scores = [score for _, score in sends]
                    if window_ms and now - max(scores) < window_ms:
                        delay = max(scores) + window_ms - now
                    if len(scores) >= s.rate_limit:
                        delay = max(delay, min(scores) + period_ms - now)
                if delay > 0:
                    pipe.multi()
                    pipe.set(due, str(int(now + delay)), px=int(delay) + DUE_GRACE_MS)
                    # rq's scheduler keeps whole seconds (truncated): round up
                    # so the flush never runs before the window has passed.
                    when = datetime.fromtimestamp(math.ceil(time.time() + delay / 1000), UTC)
                    notify_queue.enqueue_at(
                        when, FLUSH_JOB, channel,
                        job_timeout=60, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                        description=f"flush the {channel} digest buffer", pipeline=pipe)
                    pipe.execute()
                    logger.debug("%s: %d notice(s) wait %.1fs for a digest", channel, length,
                                 delay / 1000)
                    return "scheduled"
                raw_items = pipe.lrange(buffer, 0, s.digest_max - 1)
                notes = []
                for raw in raw_items:
                    try:
                        notes.append(Notification.from_dict(json.loads(raw)).to_dict())
                    except ValueError as exc:
                        logger.warning("%s: dropping an unreadable buffered notice (%s)",
                                       channel, exc)
                delivery = {"id": new_delivery_id(now), "notifications": notes,
                            "created_ms": now}
                pipe.multi()
                pipe.ltrim(buffer, len(raw_items), -1)
                pipe.zadd(rate, {delivery["id"]: now})
                pipe.zremrangebyscore(rate, "-inf", now - max(period_ms, window_ms))
                pipe.pexpire(rate, int(max(period_ms, window_ms)) + 1000)
                if notes:
                    enqueue_delivery(ctx, channel, delivery, pipeline=pipe)
                pipe.execute()
                outcome = "sent"
                if length <= len(raw_items):
                    return outcome
                # More than one message's worth: the rest waits for the window.
            except WatchError:
                continue
    logger.warning("%s: the digest buffer is too contended to drain now; a later "
                   "drain will take it", channel)
    return outcome


def flush(ctx: AlerterContext, channel: str) -> str:
    """The scheduled flush: drop the guard, then drain."""
    ctx.client.delete(ctx.keys.digest_due(channel))
    return drain(ctx, channel)


def rescue(ctx: AlerterContext, channels: Iterable[str]) -> None:
    """Drain buffers whose flush is missing or overdue (its scheduler died)."""
    client, keys = ctx.client, ctx.keys
    for channel in channels:
        if not client.llen(keys.digest_buffer(channel)):
            continue
        due = client.get(keys.digest_due(channel))
        if due is not None:
            try:
                overdue = now_ms(client) - int(due) > 5000
            except ValueError:
                overdue = True
            if not overdue:
                continue
            logger.warning("%s: the scheduled digest flush is overdue; flushing now", channel)
            client.delete(keys.digest_due(channel))
        drain(ctx, channel)


# -- delivery ------------------------------------------------------------------------


def _claim(ctx: AlerterContext, channel: str, notes: list[Notification], token: str
           ) -> list[int]:
    keys = [ctx.keys.notification_sent(dedup_id(channel, n.id)) for n in notes]
    lease = (ctx.settings.delivery_timeout + 30) * 1000
    result = ctx.client.eval(_CLAIM, len(keys), *keys, token, lease)
    return [int(x) for x in result]


def _release(ctx: AlerterContext, channel: str, notes: list[Notification], token: str) -> None:
    if notes:
        keys = [ctx.keys.notification_sent(dedup_id(channel, n.id)) for n in notes]
        ctx.client.eval(_RELEASE, len(keys), *keys, token)


def record_failure(ctx: AlerterContext, channel: str, delivery: dict[str, Any],
                   error: DeliveryError, attempts: int, at_ms: int) -> None:
    """Keep a failed delivery for ``mtbbs-alerter failed`` (and drop the oldest)."""
    key = ctx.keys.notifications_failed()
    record = {
        "id": delivery["id"],
        "channel": channel,
        "notifications": delivery["notifications"],
        "error": error.message,
        "permanent": error.permanent,
        "attempts": attempts,
        "failed_at": iso_from_ms(at_ms),
        "failed_ms": at_ms,
    }
    client = ctx.client
    client.hset(key, delivery["id"], json.dumps(record, ensure_ascii=False, sort_keys=True))
    excess = client.hlen(key) - ctx.settings.failed_max
    if excess > 0:
        oldest = sorted(client.hkeys(key), key=_failure_age)[:excess]
        client.hdel(key, *oldest)


def _failure_age(field_name: Any) -> tuple[int, str]:
    text = field_name.decode() if isinstance(field_name, bytes) else str(field_name)
    head = text.split("-", 1)[0]
    return (int(head) if head.isdigit() else 0, text)


def run_delivery(ctx: AlerterContext, channel: str, delivery: dict[str, Any], *,
                 token: str, attempt: int) -> Any:
    """One attempt at a delivery: a result dict, or an rq Retry for a temporary error."""
    client, s = ctx.client, ctx.settings
    started = now_ms(client)
    notes: list[Notification] = []
    for item in delivery.get("notifications", []):
        try:
            notes.append(Notification.from_dict(item))
        except ValueError as exc:
            logger.warning("delivery %s: skipping an unreadable notice (%s)",
                           delivery.get("id"), exc)
    notifier = ctx.notifiers.get(channel)
    if notifier is None:
        error = DeliveryError(f"channel {channel} is not configured on this worker",
                              permanent=True)
        record_failure(ctx, channel, delivery, error, attempt, started)
        with client.pipeline(transaction=False) as pipe:
            push_log(pipe, ctx, [log_entry(started, "failed", channel=channel, note=n,
                                           detail=error.message, delivery=delivery["id"])
                                 for n in notes])
            pipe.execute()
        return {"delivery": delivery["id"], "failed": len(notes), "error": error.message}
    claims = _claim(ctx, channel, notes, token) if notes else []
    todo = [n for n, c in zip(notes, claims, strict=True) if c == CLAIMED]
    skipped = [(n, c) for n, c in zip(notes, claims, strict=True) if c != CLAIMED]
    entries = [log_entry(started, "duplicate", channel=channel, note=n, delivery=delivery["id"],
                         detail="already sent" if c == ALREADY_SENT else
                         "being sent by another job")
               for n, c in skipped]
    if not todo:
        with client.pipeline(transaction=False) as pipe:
            push_log(pipe, ctx, entries)
            pipe.execute()
        return {"delivery": delivery["id"], "sent": 0, "duplicates": len(skipped)}
    began = time.monotonic()
    try:
        detail = notifier.send(todo)
    except DeliveryError as exc:
        error = exc
    except Exception as exc:
        logger.exception("%s: unexpected error while sending delivery %s", channel,
                         delivery["id"])
        error = DeliveryError(f"unexpected {type(exc).__name__}", permanent=False)
    else:
        finished = now_ms(client)
        with client.pipeline(transaction=False) as pipe:
            for note in todo:
                pipe.set(ctx.keys.notification_sent(dedup_id(channel, note.id)),
                         f"sent:{iso_from_ms(finished)}:{delivery['id']}", ex=s.sent_ttl)
            entries += [log_entry(finished, "sent", channel=channel, note=n, detail=detail,
                                  delivery=delivery["id"]) for n in todo]
            push_log(pipe, ctx, entries)
            pipe.execute()
        logger.info("%s: delivered %d notification(s) in %.0f ms (%s)", channel, len(todo),
                    (time.monotonic() - began) * 1000, detail)
        return {"delivery": delivery["id"], "sent": len(todo), "duplicates": len(skipped)}

    _release(ctx, channel, todo, token)
    failed_at = now_ms(client)
    give_up = error.permanent or attempt > s.retry_max
    if give_up:
        failed = dict(delivery, notifications=[n.to_dict() for n in todo])
        record_failure(ctx, channel, failed, error, attempt, failed_at)
        outcome, detail = "failed", (f"{'permanent' if error.permanent else 'temporary'} "
                                     f"error after {plural(attempt, 'attempt')}: {error.message}")
        logger.warning("%s: delivery %s failed for good: %s", channel, delivery["id"], detail)
    else:
        if error.retry_after is not None:
            intervals = [max(1, min(math.ceil(error.retry_after), int(s.retry_after_max)))]
        else:
            intervals = s.retry_seconds
        wait = intervals[min(len(intervals) - 1, attempt - 1)]
        outcome, detail = "retrying", f"attempt {attempt} failed: {error.message}; " \
            f"retry in {wait}s"
        logger.warning("%s: delivery %s %s", channel, delivery["id"], detail)
    entries += [log_entry(failed_at, outcome, channel=channel, note=n, detail=detail,
                          delivery=delivery["id"]) for n in todo]
    with client.pipeline(transaction=False) as pipe:
        push_log(pipe, ctx, entries)
        pipe.execute()
    if give_up:
        return {"delivery": delivery["id"], "failed": len(todo), "error": error.message,
                "permanent": error.permanent}
    return Retry(max=s.retry_max, interval=rq_retry_intervals(intervals))
