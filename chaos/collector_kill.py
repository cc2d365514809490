"""Chaos: a collector SIGKILLed mid-batch; another takes over, nothing lost or doubled.

A backlog of ``--hosts`` x ``--reports`` reports (each carrying its sequence
number in a figure that lands in the host's history line) waits on the
hosts' reports streams, one per host. A real ``mtbbs-collector run --name
c1`` starts on them and is SIGKILLed while it holds entries it read but has
not acknowledged. A second collector, ``c2``, starts after
``claim_min_idle_s``: it shares the hosts with c1 until c1's last heartbeat
is older than ``ring_timeout_s``, then reads them all, claims c1's pending
entries and works off the rest. A host's entries are applied in stream
order throughout, so c2 holds back what comes after an entry c1 held.

Counted per host from the history list (one line per applied report): the
sequence numbers applied twice and those never applied; and the stored
state against the newest report. Expected: each report applied exactly
once, every host at its newest report, nothing pending, no dead letters.

    python chaos/collector_kill.py --hosts 20 --reports 2000
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import clean_env, command, pending_entries, processes, terminate, wait_until

from wire.keys import KeySpace
from wire.messages import Report, encode

NOW = time.time()


def report(host: str, seq: int) -> Report:
    return Report(host=host, agent_version="chaos", epoch=1, seq=seq, observed_at=NOW,
                  interval=3600.0,
                  checks={"disk_space": {"healthy": True, "percent_used": 50.0},
                          "memory": {"healthy": True, "process_rss_mb": float(seq)}})


def preload(client: Any, keys: KeySpace, hosts: list[str], reports: int) -> int:
    """Append the backlog to each host's stream, seqs rising; the entries written."""
    written = 0
    pipe = client.pipeline(transaction=False)
    for seq in range(1, reports + 1):
        for host in hosts:
            pipe.xadd(keys.reports_stream(host), {"m": encode(report(host, seq))})
            written += 1
        if seq % 50 == 0:
            pipe.execute()
    pipe.execute()
    return written


def history_seqs(client: Any, key: str) -> list[int]:
    """The sequence numbers of the reports in a history list (4th CSV field)."""
    seqs = []
    for line in client.lrange(key, 0, -1):
        fields = line.decode().split(",")
        seqs.append(int(float(fields[3])))
    return seqs


def scenario(workdir: Path, *, hosts_count: int, reports: int) -> dict[str, Any]:
    keys = KeySpace()
    hosts = [f"bbs-{i:03d}" for i in range(hosts_count)]
    streams = [keys.reports_stream(host) for host in hosts]
    env = clean_env({"MTBBS_COLLECTOR_CLAIM_MIN_IDLE_S": "1.0",
                     "MTBBS_COLLECTOR_CLAIM_INTERVAL_S": "0.5",
                     "MTBBS_COLLECTOR_HISTORY_LENGTH": str(reports + 10),
                     "MTBBS_COLLECTOR_EVALUATE": "false",
                     "MTBBS_COLLECTOR_HEARTBEAT_INTERVAL_S": "0.5",
                     # c2 takes c1's hosts once c1 has been silent this long.
                     "MTBBS_COLLECTOR_RING_TIMEOUT_S": "2.0"})
    with processes(workdir / "logs") as group:
        server = group.redis_server(aof=False)
        client: Any = server.client()
        total = preload(client, keys, hosts, reports)

        def collector(name: str) -> Any:
            return group.spawn(name, [command("mtbbs-collector"), "run", "--name", name,
                                      "--redis-url", server.url], env)

        def progress() -> int:
            pipe = client.pipeline(transaction=False)
            for host in hosts:
                pipe.hget(keys.host(host), "seq")
            return sum(int(v or 0) for v in pipe.execute())

        first = collector("c1")

        def pending() -> int:
            return pending_entries(client, streams)[0]

        def mid_batch() -> bool:
            if progress() < total // 10:
                return False
            return pending_entries(client, streams)[1].get("c1", 0) > 0

        wait_until(mid_batch, 120, interval=0.001, what="c1 holding a batch", alive=[first])
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        pending_at_kill = pending()
        applied_at_kill = progress()
        time.sleep(1.5)  # past claim_min_idle_s: c1's entries are claimable
        second = collector("c2")
        wait_until(lambda: progress() == total and pending() == 0,
                   300, what="c2 worked off the backlog", alive=[second])
        took_over_s = time.monotonic() - killed_at
        time.sleep(1.0)  # one more heartbeat with the final counters
        beat = {k.decode(): v.decode() for k, v in client.hgetall(keys.collector("c2")).items()}
        second_exit = terminate(second)
        applied_twice = 0
        never_applied = 0
        behind = 0
        for host in hosts:
            seqs = history_seqs(client, keys.host_history(host))
            applied_twice += len(seqs) - len(set(seqs))
            never_applied += len(set(range(1, reports + 1)) - set(seqs))
            behind += reports - int(client.hget(keys.host(host), "seq") or 0)
        dead = client.xlen(keys.dead_letter_stream())
        left_pending = pending()
    return {
        "entries": total,
        "applied_by_c1_before_kill": applied_at_kill,
        "pending_in_c1_at_kill": pending_at_kill,
        "reclaimed_by_c2": int(beat.get("reclaimed", 0)),
        "processed_by_c2": int(beat.get("processed", 0)),
        "applied_twice": applied_twice,
        "never_applied": never_applied,
        "state_behind_newest": behind,
        "dead_letters": dead,
        "left_pending": left_pending,
        "kill_to_backlog_done_s": round(took_over_s, 1),
        "c2_exit": second_exit,
    }


def main() -> int:
    parser = harness.scenario_parser(__doc__)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--reports", type=int, default=2000, help="reports per host")
    args = parser.parse_args()
    result = harness.run_and_report(
        args, "collector SIGKILLed mid-batch", "chaos-collector-",
        lambda workdir: scenario(workdir, hosts_count=args.hosts, reports=args.reports))
    ok = (result["applied_twice"] == 0 and result["never_applied"] == 0
          and result["state_behind_newest"] == 0 and result["left_pending"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
