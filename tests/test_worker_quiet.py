"""The worker's third-party libraries stay quiet and fetch no code: no transformers FutureWarning, no
bitsandbytes message about a hub kernel, and the `kernels` package (code from the Hugging Face hub) is
never loaded, even where it is installed. Each check runs in a fresh interpreter, as the worker does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# what a worker does before training: the package first (as `python -m daemon.training`), then a model
# with activation checkpointing and a LoRA adapter (peft imports bitsandbytes, transformers its hub kernels)
TINY_LOAD = """
import daemon.training
import bitsandbytes, peft, transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from daemon.training.adapters import enable_checkpointing
model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2))
enable_checkpointing(model)
get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
print("loaded")
"""


def run_tiny_load(tmp_path: Path, *, with_kernels_installed: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="always")
    if with_kernels_installed:  # a stand-in `kernels` package that says when something imports it
        (tmp_path / "kernels").mkdir()
        (tmp_path / "kernels" / "__init__.py").write_text(
            "import os, pathlib\n"
            "pathlib.Path(os.environ['KERNELS_IMPORTED_MARK']).write_text('imported')\n"
            "__version__ = '0.12.0'\n"
            "def get_kernel(*args, **kwargs):\n"
            "    raise RuntimeError('a kernel fetch from the hub')\n"
        )
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO_ROOT)])
        env["KERNELS_IMPORTED_MARK"] = str(tmp_path / "kernels-imported")
    return subprocess.run([sys.executable, "-c", TINY_LOAD], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_worker_loads_a_model_without_a_future_warning_or_a_hub_kernel_message(tmp_path: Path) -> None:
    done = run_tiny_load(tmp_path)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-3000:]
    assert "FutureWarning" not in done.stderr, done.stderr[-3000:]
    assert "kernels-community" not in done.stderr, done.stderr[-3000:]


def test_the_worker_never_loads_hub_kernels_even_where_the_kernels_package_is_installed(tmp_path: Path) -> None:
    done = run_tiny_load(tmp_path, with_kernels_installed=True)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-3000:]
    assert not (tmp_path / "kernels-imported").exists(), done.stderr[-3000:]
    assert "kernels-community" not in done.stderr, done.stderr[-3000:]
