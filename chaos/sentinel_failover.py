"""Chaos: the Redis master dies and Sentinel promotes its replica.

Two redis-servers (a master and its replica) and one Sentinel (quorum 1,
``down-after-milliseconds`` 1000) on loopback. A real ``mtbbs-agent run``
finds the master through Sentinel (``[redis] sentinels``) and reports every
``--interval`` seconds. After ``--before`` reports the master is SIGKILLed
and never comes back; Sentinel promotes the replica; the agent, whose
reports spool meanwhile, finds the new master through Sentinel and delivers.
After ``--after`` more reports the agent is stopped (SIGTERM, last flush).

Printed: reports made against reports on the new master, missing sequence
numbers, copies (a report the agent sent again after a lost reply is on
its stream twice, which the collector skips by its epoch and seq: delivery
is at least once), seconds from the kill to Sentinel's switch and to the
first report on the new master, and what is left in the spool. No
collector runs, so the host's stream keeps everything sent. A report the
old master acknowledged but had not yet replicated when it died is the one
way to lose a report here (Redis replication is asynchronous); the figures
show whether that happened.

    python chaos/sentinel_failover.py --before 50 --after 50
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import agent_argv, clean_env, processes, stream_messages, terminate, wait_until

from agent.spool import SpoolError, inspect
from wire.keys import KeySpace

HOST = "bbs-ha"


def last_seq(spool: Path) -> int:
    try:
        return inspect(spool, 10_000).last_seq
    except SpoolError:
        return 0


def scenario(workdir: Path, *, before: int, after: int, interval: float) -> dict[str, Any]:
    keys = KeySpace()
    stream = keys.reports_stream(HOST)
    spool = workdir / "agent" / "spool.db"
    with processes(workdir / "logs") as group:
        master = group.redis_server("master", aof=False)
        replica = group.redis_server("replica", aof=False,
                                     extra=("--replicaof", "127.0.0.1", str(master.port)))
        wait_until(lambda: replica.client().info("replication").get("master_link_status")
                   == "up", 30, what="replica in sync")
        sentinel = group.sentinel(master.port)
        wait_until(lambda: sentinel.replicas() >= 1, 30, what="sentinel sees the replica")
        env = clean_env({"MTBBS_REDIS_SENTINELS": sentinel.address,
                         "MTBBS_REDIS_SENTINEL_SERVICE": "mymaster",
                         "MTBBS_REDIS_SOCKET_TIMEOUT": "1",
                         "MTBBS_AGENT_BACKOFF_INITIAL": "0.1", "MTBBS_AGENT_BACKOFF_MAX": "0.5"})
        agent = group.spawn("agent", agent_argv(HOST, "redis://127.0.0.1:1/0",
                                                workdir / "agent", interval=interval), env)
        old = master.client()
        wait_until(lambda: old.xlen(stream) >= before, before * interval * 5 + 30,
                   what=f"{before} reports on the master", alive=[agent])
        # Let the replica catch up with what it can, as it would in production
        # between two writes; the kill itself gives no warning.
        made_before_kill = last_seq(spool)
        on_master_at_kill = old.xlen(stream)
        killed_at = time.monotonic()
        master.kill()
        wait_until(lambda: sentinel.master_port_now() == replica.port, 60,
                   what="sentinel promotes the replica")
        switched_at = time.monotonic()
        new = replica.client()
        wait_until(lambda: any(m.seq > made_before_kill
                               for _, m in stream_messages(new, stream)[-5:]),
                   60, what="a report on the new master", alive=[agent])
        recovered_at = time.monotonic()
        target = last_seq(spool) + after
        wait_until(lambda: last_seq(spool) >= target, after * interval * 5 + 30,
                   what=f"{after} reports after the failover", alive=[agent])
        code = terminate(agent)
        status = inspect(spool, 10_000)
        messages = [m for _, m in stream_messages(new, stream)]
    seqs = [m.seq for m in messages]
    present = set(seqs)
    missing = [s for s in range(1, status.last_seq + 1) if s not in present]
    return {
        "reports_made": status.last_seq,
        "stored_on_new_master": len(messages),
        "on_old_master_at_kill": on_master_at_kill,
        "missing_seqs": missing,
        "missing": len(missing),
        "copies": len(seqs) - len(present),
        "left_in_spool": status.pending,
        "dropped_by_spool": status.dropped_total,
        "failover_s": round(switched_at - killed_at, 2),
        "kill_to_first_report_on_new_master_s": round(recovered_at - killed_at, 2),
        "agent_exit": code,
    }


def main() -> int:
    parser = harness.scenario_parser(__doc__)
    parser.add_argument("--before", type=int, default=50, help="reports before the kill")
    parser.add_argument("--after", type=int, default=50, help="reports after the failover")
    parser.add_argument("--interval", type=float, default=0.1, help="agent interval, s")
    args = parser.parse_args()
    result = harness.run_and_report(
        args, "sentinel failover", "chaos-sentinel-",
        lambda workdir: scenario(workdir, before=args.before, after=args.after,
                                 interval=args.interval))
    return 0 if result["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
