"""Fixtures of the chaos tests: each runs a ``chaos/`` scenario script, shortened.

The scenarios live in the repository's ``chaos/`` directory as scripts (the
long versions are run by hand or in a nightly job); a test runs the same
script with short durations as a child process, reads the figures it wrote
as JSON, and asserts on them. The figures are printed too, so
``pytest -s tests/chaos`` shows them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHAOS_DIR = Path(__file__).resolve().parents[2] / "chaos"


@pytest.fixture
def run_scenario(tmp_path: Path, clean_env: dict[str, str]) -> Callable[..., dict[str, Any]]:
    """``run_scenario("spool_full.py", "--reports", "50")`` -> the scenario's figures."""

    def run(script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
        path = CHAOS_DIR / script
        if not path.exists():
            pytest.fail(f"chaos script {path.name} is missing")
        out = tmp_path / f"{path.stem}.json"
        workdir = tmp_path / f"{path.stem}-work"
        result = subprocess.run(
            [sys.executable, str(path), "--json", str(out), "--workdir", str(workdir), *args],
            capture_output=True, text=True, timeout=timeout, env=clean_env, cwd=tmp_path)
        print(result.stdout)
        if not out.exists():
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                             for p in sorted((workdir / "logs").glob("*.log")))
            pytest.fail(f"{script} wrote no figures (exit {result.returncode}):\n"
                        f"{result.stderr[-3000:]}\n{logs}")
        return dict(json.loads(out.read_text()))

    return run
