"""Chaos: Redis SIGKILLed and restarted mid-run, with AOF on; no report lost end to end.

A Redis with ``appendonly yes`` and ``appendfsync always``, ``--agents`` real
``mtbbs-agent run`` processes (one host each, a report every ``--interval``
seconds) and one real ``mtbbs-collector run``. After ``--before`` seconds
Redis is SIGKILLed, stays down ``--down`` seconds (the agents spool, the
collector retries), and restarts on the same port from its AOF. After
``--after`` more seconds the agents are stopped (SIGTERM: a last delivery)
and the collector is given time to catch up.

Also printed: the staleness transitions the collector made while every
agent was alive (each one would reach the alerter as a host gone silent).

Per host: reports made (the agent's sequence), the sequence the collector
stored, the history lines it wrote (one per applied report: fewer is a
report lost, more one applied twice), what stayed in the spool. The hosts'
streams are no record of what was sent: the collector trims what it has
applied, and a report the agent re-sent after a lost reply is on its stream
twice (the collector skips the copy by its epoch and seq, counted as
``copies_skipped``). Also checked: the newest entry of each host's stream
before the kill is there again after the restart (the AOF replays in order,
so everything before it is too). Expected: every report made stored once,
nothing left over.

    python chaos/redis_restart.py --agents 3 --before 10 --down 10 --after 10
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import (
    agent_argv,
    clean_env,
    command,
    pending_entries,
    processes,
    terminate,
    wait_until,
)

from agent.spool import inspect
from wire.keys import KeySpace


def scenario(workdir: Path, *, agents: int, interval: float, before: float, down: float,
             after: float, agent_backoff: float) -> dict[str, Any]:
    keys = KeySpace()
    hosts = [f"bbs-{i:02d}" for i in range(agents)]
    streams = [keys.reports_stream(host) for host in hosts]
    with processes(workdir / "logs") as group:
        server = group.redis_server(aof=True)
        client: Any = server.client()
        # The agents retry more slowly than the collector reconnects, as with
        # the defaults (60 s against 30 s): the collector sees Redis first.
        agent_env = clean_env({"MTBBS_AGENT_BACKOFF_INITIAL": str(agent_backoff),
                               "MTBBS_AGENT_BACKOFF_MAX": str(agent_backoff),
                               "MTBBS_AGENT_BACKOFF_JITTER": "0"})
        children = {host: group.spawn(f"agent-{host}",
                                      agent_argv(host, server.url, workdir / host,
                                                 interval=interval), agent_env)
                    for host in hosts}
        collector_env = clean_env({"MTBBS_COLLECTOR_MAX_BACKOFF_S": "0.5",
                                   "MTBBS_COLLECTOR_HISTORY_LENGTH": "100000",
                                   "MTBBS_COLLECTOR_EVALUATE": "false",
                                   "MTBBS_COLLECTOR_HEARTBEAT_INTERVAL_S": "0.5",
                                   "MTBBS_COLLECTOR_SWEEP_INTERVAL_S": "0.2"})
        collector = group.spawn("collector", [command("mtbbs-collector"), "run", "--name",
                                              "c1", "--redis-url", server.url], collector_env)
        alive = [*children.values(), collector]
        wait_until(lambda: all(client.exists(keys.host(h)) for h in hosts), 60,
                   what="first state of every host", alive=alive)
        time.sleep(before)
        newest_at_kill = [(stream, entries[0][0]) for stream, entries in
                          ((stream, client.xrevrange(stream, count=1)) for stream in streams)
                          if entries]
        server.kill()
        killed_at = time.monotonic()
        time.sleep(down)
        server.start()
        restarted_at = time.monotonic()
        client = server.client()
        # What the AOF gave back: the newest entry of each stream before the
        # kill. Checked at once: it could be trimmed only after a newer entry
        # is applied, and the agents are still backing off.
        back_after_restart = sum(1 for stream, entry_id in newest_at_kill
                                 if client.xrange(stream, min=entry_id, max=entry_id))
        time.sleep(after)
        # The agents were alive throughout: any staleness so far came from
        # Redis's absence, not from a silent host.
        stale_while_agents_alive = int(client.hget(keys.collector("c1"), "stale_transitions")
                                       or 0)
        codes = {host: terminate(child) for host, child in children.items()}
        spools = {host: inspect(workdir / host / "spool.db", 10_000) for host in hosts}

        def caught_up() -> bool:
            for host in hosts:
                stored = client.hget(keys.host(host), "seq")
                if stored is None or int(stored) < spools[host].last_seq:
                    return False
            return pending_entries(client, streams)[0] == 0

        wait_until(caught_up, 60, what="the collector caught up", alive=[collector])
        collector_exit = terminate(collector)
        # Its last heartbeat, written as it stopped, has its final counters.
        beat = {k.decode(): v.decode() for k, v in client.hgetall(keys.collector("c1")).items()}
        per_host: dict[str, Any] = {}
        for host in hosts:
            made = spools[host].last_seq
            lines = client.llen(keys.host_history(host))
            per_host[host] = {
                "made": made,
                "history_lines": lines,
                "missing": max(0, made - lines),
                "applied_twice": max(0, lines - made),
                "stored_seq": int(client.hget(keys.host(host), "seq") or 0),
                "left_in_spool": spools[host].pending,
                "dropped": spools[host].dropped_total,
            }
        dead = client.xlen(keys.dead_letter_stream())
    made = sum(h["made"] for h in per_host.values())
    return {
        "hosts": agents,
        "reports_made": made,
        "reports_stored_in_history": sum(h["history_lines"] for h in per_host.values()),
        "missing": sum(h["missing"] for h in per_host.values()),
        "applied_twice": sum(h["applied_twice"] for h in per_host.values()),
        "state_behind": sum(h["made"] - h["stored_seq"] for h in per_host.values()),
        "entries_applied": int(beat.get("applied", 0)),
        "copies_skipped": int(beat.get("skipped", 0)),
        "left_in_spools": sum(h["left_in_spool"] for h in per_host.values()),
        "dropped_by_spools": sum(h["dropped"] for h in per_host.values()),
        "dead_letters": dead,
        "stale_transitions_while_agents_alive": stale_while_agents_alive,
        "newest_entries_at_kill": len(newest_at_kill),
        "newest_entries_after_restart_from_aof": back_after_restart,
        "redis_down_s": round(restarted_at - killed_at, 1),
        "agent_exits": sorted(set(codes.values())),
        "collector_exit": collector_exit,
        "per_host": per_host,
    }


def main() -> int:
    parser = harness.scenario_parser(__doc__)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.2, help="agent interval, s")
    parser.add_argument("--before", type=float, default=10.0, help="seconds before the kill")
    parser.add_argument("--down", type=float, default=10.0, help="seconds Redis stays down")
    parser.add_argument("--after", type=float, default=10.0, help="seconds after the restart")
    parser.add_argument("--agent-backoff", type=float, default=2.0,
                        help="the agents' retry delay, s (default 2)")
    args = parser.parse_args()
    result = harness.run_and_report(
        args, "redis killed and restarted (AOF)", "chaos-redis-",
        lambda workdir: scenario(workdir, agents=args.agents, interval=args.interval,
                                 before=args.before, down=args.down, after=args.after,
                                 agent_backoff=args.agent_backoff), not_printed=("per_host",))
    ok = (result["missing"] == 0 and result["applied_twice"] == 0
          and result["state_behind"] == 0
          and result["reports_stored_in_history"] == result["reports_made"]
          and result["newest_entries_after_restart_from_aof"] == result["newest_entries_at_kill"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
