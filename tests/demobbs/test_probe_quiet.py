"""The demo BBS probed by a real agent: the probe's connections stay out of
both INFO logs, a real caller's login and logoff do not."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from wire.keys import KeySpace

pytestmark = pytest.mark.e2e


def test_a_probe_every_cycle_logs_nothing_at_info(
        start_bbs: Any, redis_url: str, redis_client: Any, command: Any,
        clean_env: dict[str, str], tmp_path: Path) -> None:
    bbs = start_bbs(redis_url)
    agent_log = tmp_path / "agent.log"
    with agent_log.open("wb") as err:
        agent = subprocess.Popen(
            [command("mtbbs-agent"), "run", "--redis-url", redis_url, "--host", "demo-01",
             "--db", str(bbs.db), "--data-dir", str(bbs.db.parent),
             "--pidfile", str(bbs.pidfile), "--probe-port", str(bbs.port),
             "--spool", str(tmp_path / "spool.db"), "--interval", "0.1"],
            env=clean_env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while redis_client.xlen(KeySpace().reports_stream("demo-01")) < 10:
            assert time.monotonic() < deadline, agent_log.read_text()
            time.sleep(0.05)
        client = bbs.client()
        client.expect("login: ")
        client.send("guest")
        client.expect("Command> ")
        client.send("Q")
        client.read_to_eof()
        client.close()
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    assert bbs.stop() == 0

    bbs_info = [line for line in bbs.output().splitlines() if "[INFO]" in line]
    sessions = [line for line in bbs_info if re.search(r"session \d+\.\d+", line)]
    assert len(sessions) == 2, bbs_info
    # Start, database, stop and the reporter's summary besides: nothing per probe.
    assert len(bbs_info) <= 6, bbs_info
    assert "logged in as 'guest'" in sessions[0] and "('guest') disconnected" in sessions[1]

    health = [line for line in agent_log.read_text().splitlines() if "agent.healthlog" in line]
    assert len(health) == 1 and "all 6 checks healthy" in health[0], health
