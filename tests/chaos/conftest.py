"""Fixtures of the chaos tests: each runs a ``chaos/`` scenario script, shortened.

The scenarios live in the repository's ``chaos/`` directory as scripts (the
long versions are run by hand or in a nightly job); a test runs the same
script with short durations as a child process, reads the figures it wrote
as JSON, and asserts on them. The figures are printed too, so
``pytest -s tests/chaos`` shows them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHAOS_DIR = Path(__file__).resolve().parents[2] / "chaos"


def run_script(script: str, args: tuple[str, ...], tmp: Path, timeout: float) -> dict[str, Any]:
    """Run ``chaos/<script>`` with ``args``; the figures it wrote."""
    path = CHAOS_DIR / script
    if not path.exists():
        pytest.fail(f"chaos script {path.name} is missing")
    out = tmp / f"{path.stem}.json"
    workdir = tmp / f"{path.stem}-work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTBBS_")}
    result = subprocess.run(
        [sys.executable, str(path), "--json", str(out), "--workdir", str(workdir), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
    print(result.stdout)
    if not out.exists():
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((workdir / "logs").glob("*.log")))
        pytest.fail(f"{script} wrote no figures (exit {result.returncode}):\n"
                    f"{result.stderr[-3000:]}\n{logs}")
    return dict(json.loads(out.read_text()))


@pytest.fixture
def run_scenario(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """``run_scenario("spool_full.py", "--reports", "50")`` -> the scenario's figures."""

    def run(script: str, *args: str, timeout: float = 300) -> dict[str, Any]:
        return run_script(script, args, tmp_path, timeout)

    return run


@pytest.fixture(scope="module")
def scenario_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """Like ``run_scenario``, but each (script, args) runs once per test module."""
    cache: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}

    def run(script: str, *args: str, timeout: float = 300) -> dict[str, Any]:
        key = (script, args)
        if key not in cache:
            cache[key] = run_script(script, args, tmp_path_factory.mktemp("chaos"), timeout)
        return cache[key]

    return run
