"""The GPU benchmark's code path, run on CPU with tiny shapes, so that it still runs when a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_loan_script_runs_check_and_bench_in_smoke_mode(tmp_path: Path) -> None:
    """bench/gpu.sh --smoke: gpu_check's checks that apply on CPU pass, and gpu_bench measures every part and
    both baselines, with a ratio against each."""
    completed = subprocess.run(
        ["bash", "bench/gpu.sh", "--smoke"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHON": sys.executable, "CACHE_DIR": str(tmp_path / "cache"), "OUT": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    check = json.loads((tmp_path / "gpu_check.json").read_text())
    assert check["gpu_check"] == "passed" and check["failed"] == []
    assert check["results"]["isolation"]["passed"] is True
    assert check["results"]["packed_padded"]["passed"] is True
    assert check["results"]["liger_sum"]["passed"] is None  # not run on CPU: reported, not counted as a pass
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    for part in ("1b", "8b", "qlora"):
        assert summary[f"ticketune_{part}_tokens_per_s"] > 0
    assert summary["ratio_1b_naive"] > 0 and summary["ratio_1b_packed_liger"] > 0
