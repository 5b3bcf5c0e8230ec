"""The GPU benchmark's code path, run on CPU with tiny shapes, so that it still runs when a GPU is lent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke_runs_both_sides_and_prints_the_table(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "bench/gpu_bench.py", "--smoke", "1b"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "ticketune" in completed.stdout and "naive" in completed.stdout
    assert '"ratio_1b"' in completed.stdout.splitlines()[-1]
