"""The tiny base model, built once per test session through the worker's own command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["tiny_model_dir"]

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PRETRAIN_STEPS = 100


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("tiny-base") / "model"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.training",
            "make-base-model",
            str(model_dir),
            "--steps",
            str(FIXTURE_PRETRAIN_STEPS),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return model_dir
