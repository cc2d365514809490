"""Chaos: the agent's spool fills up while Redis is away.

A real ``mtbbs-agent run`` reports every ``--interval`` seconds to a Redis
port where nothing listens, with a spool of ``--capacity`` reports, until it
has made ``--reports`` reports. Then Redis starts on that port. Expected: the
spool kept the newest ``capacity`` reports and dropped the oldest; every
report is either on the stream or counted as dropped (the ``dropped`` field
of the delivered reports and the spool's ``dropped_total`` agree); the
delivered ones are the newest, in order.

    python chaos/spool_full.py --reports 400 --capacity 100
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import agent_argv, clean_env, processes, stream_messages, terminate, wait_until

from agent.spool import SpoolError, SpoolStatus, inspect
from stack.embedded import any_free_port
from wire.keys import KeySpace

HOST = "bbs-spool"  # the agent's host id


def status(spool: Path, capacity: int) -> SpoolStatus | None:
    """The spool's status; None while the agent is still creating it."""
    try:
        return inspect(spool, capacity)
    except SpoolError:
        return None


def scenario(workdir: Path, *, reports: int, capacity: int, interval: float) -> dict[str, Any]:
    """Run the scenario in ``workdir``; its figures."""
    keys = KeySpace()
    port = any_free_port()
    url = f"redis://127.0.0.1:{port}/0"
    spool = workdir / "agent" / "spool.db"
    env = clean_env({"MTBBS_AGENT_SPOOL_MAX_REPORTS": str(capacity),
                     "MTBBS_AGENT_BACKOFF_INITIAL": "0.05", "MTBBS_AGENT_BACKOFF_MAX": "0.2",
                     "MTBBS_AGENT_SPOOL_SYNC": "normal"})
    with processes(workdir / "logs") as group:
        started = time.monotonic()
        agent = group.spawn("agent", agent_argv(HOST, url, workdir / "agent",
                                                interval=interval), env)
        wait_until(lambda: (s := status(spool, capacity)) and s.last_seq >= reports,
                   timeout=reports * interval * 4 + 30, what=f"{reports} reports made",
                   alive=[agent])
        while_down = inspect(spool, capacity)
        server = group.redis_server(port=port, aof=False)
        client = server.client()
        wait_until(lambda: inspect(spool, capacity).pending == 0
                   and client.xlen(keys.reports_stream(HOST)) > 0,
                   timeout=60, what="spool drained", alive=[agent])
        code = terminate(agent)
        final = inspect(spool, capacity)
        messages = [m for _, m in stream_messages(client, keys.reports_stream(HOST))]
        elapsed = time.monotonic() - started
    seqs = [m.seq for m in messages]
    made = final.last_seq
    dropped_reported = sum(m.dropped for m in messages)
    return {
        "reports_made": made,
        "spool_capacity": capacity,
        "spooled_at_reconnect": while_down.pending,
        "dropped_counted_by_spool": final.dropped_total,
        "dropped_reported_in_stream": dropped_reported,
        "stored_on_stream": len(messages),
        "lost_uncounted": made - len(messages) - final.dropped_total,
        "duplicates": len(seqs) - len(set(seqs)),
        "in_order": seqs == sorted(seqs),
        "oldest_delivered_seq": min(seqs) if seqs else None,
        "first_dropped_seq": 1 if final.dropped_total else None,
        "agent_exit": code,
        "seconds": round(elapsed, 1),
    }


def main() -> int:
    parser = harness.scenario_parser(__doc__)
    parser.add_argument("--reports", type=int, default=400, help="reports made while Redis "
                        "is away (default 400)")
    parser.add_argument("--capacity", type=int, default=100, help="spool size (default 100)")
    parser.add_argument("--interval", type=float, default=0.1, help="agent interval, s "
                        "(default 0.1, the least the agent accepts)")
    args = parser.parse_args()
    result = harness.run_and_report(
        args, "agent spool full", "chaos-spool-",
        lambda workdir: scenario(workdir, reports=args.reports, capacity=args.capacity,
                                 interval=args.interval))
    ok = result["lost_uncounted"] == 0 and result["duplicates"] == 0 and result["in_order"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
