"""The readers' benchmark runs on a tiny fleet and prints its figures (a smoke test,
no timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_readers.py"
SECONDS = r"\d+\.\d{3} s"


def test_the_benchmark_prints_its_figures() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--hosts", "50", "--rounds", "1"],
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(rf"^python start-up \(python -c pass\): {SECONDS}$", out, re.MULTILINE)
    for label in ("mtbbs-monitor watch --once", "mtbbs-collector status",
                  "mtbbs-collector hosts"):
        assert re.search(rf"^{re.escape(label)}: {SECONDS}, beyond start-up -?{SECONDS}$",
                         out, re.MULTILINE), label
    aggregates = re.search(rf"^GET /metrics \(fleet aggregates\): {SECONDS}, [\d.]+ MB, "
                           r"([\d,]+) series$", out, re.MULTILINE)
    per_host = re.search(rf"^GET /metrics, exporter --host-series: {SECONDS}, [\d.]+ MB, "
                         r"([\d,]+) series$", out, re.MULTILINE)
    assert aggregates and per_host, out
    # Every host's series come only on request.
    assert int(per_host.group(1).replace(",", "")) > 50 * 10 > int(
        aggregates.group(1).replace(",", ""))
