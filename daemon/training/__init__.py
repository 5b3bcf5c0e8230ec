"""The training worker: the only package that imports torch, transformers and peft.

Runs as a child process, `python -m daemon.training <verb>`:
- `make-base-model DIR`: builds the tiny Llama-architecture demo model and its tokenizer (base_model.py),
  or with `--pretrained NAME` / `--from-gguf FILE` a real one from a GGUF file (pretrained.py).
- `train --spec SPEC.json`: trains and evaluates a LoRA adapter, writes it and `result.json` (lora_recipe.py).

Set here, before anything imports them: no code is fetched from a hub at run time. transformers' hub
kernels are off (`USE_HUB_KERNELS=NO`), and the `kernels` package is never imported, even where it is
installed: bitsandbytes has no switch for the CPU kernel it fetches through it (an optional speed-up),
and its warning that the fetch failed is silenced. So is transformers' deprecation warning that peft
triggers on every model it wraps.
"""

import logging
import os
import sys
import warnings

os.environ.setdefault("USE_HUB_KERNELS", "NO")
sys.modules.setdefault("kernels", None)  # an import of it fails, and transformers finds no such package
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
