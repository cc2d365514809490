"""The rq jobs of the alerter: module-level functions at stable import paths.

They take plain, JSON-serialisable arguments and find the configuration with
:func:`alerter.context.get_context` (installed by ``mtbbs-alerter worker``).

* ``evaluate_host(*hosts)`` — enqueued by the collector (``wire.keys.EVALUATE_JOB``)
  on ``KeySpace.evaluate_queue()`` after it marked the hosts pending; one job
  carries up to a few dozen hosts, evaluated together.
* ``flush_channel(channel)`` — scheduled by the digest logic at the end of a
  channel's window or rate period.
* ``deliver(channel, delivery)`` — one message on one channel; returns an rq
  ``Retry`` on a temporary error.
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from alerter import dispatch
from alerter.context import get_context
from alerter.evaluate import evaluate_hosts


def evaluate_host(*hosts: str) -> dict[str, Any]:
    """Evaluate the rules of ``hosts`` (deletes their evaluation-pending marks first)."""
    return evaluate_hosts(get_context(), hosts).as_dict()


def flush_channel(channel: str) -> str:
    """Send a channel's collected digest (or reschedule while rate-limited)."""
    return dispatch.flush(get_context(), channel)


def deliver(channel: str, delivery: dict[str, Any]) -> Any:
    """Deliver ``delivery`` (``{"id", "notifications"}``) on ``channel``."""
    job = get_current_job()
    token = job.id if job is not None else f"local-{delivery.get('id')}"
    attempt = ((job.number_of_retries or 0) + 1) if job is not None else 1
    return dispatch.run_delivery(get_context(), channel, delivery, token=token, attempt=attempt)
