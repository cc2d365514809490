"""The health-check benchmark runs and reports its ratios (a smoke test, no timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench" / "bench_healthcheck.py"


def test_the_benchmark_prints_its_ratios() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--rounds", "1"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^CPU ratio \(ours / seed\): \d+\.\d\d$", done.stdout, re.MULTILINE)
    assert re.search(r"^peak RSS ratio \(ours / seed\): \d+\.\d\d$", done.stdout, re.MULTILINE)
