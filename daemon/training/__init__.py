"""The training worker: the only package that imports torch, transformers and peft.

Runs as a child process, `python -m daemon.training <verb>`:
- `make-base-model DIR`: builds the tiny Llama-architecture demo model and its tokenizer (base_model.py),
  or with `--pretrained NAME` / `--from-gguf FILE` a real one from a GGUF file (pretrained.py).
- `train --spec SPEC.json`: trains and evaluates a LoRA adapter, writes it and `result.json` (lora_recipe.py).

Two third-party messages are silenced here, before anything imports them: bitsandbytes' warning that it
could not fetch a CPU kernel from a hub (ticketune never fetches code at run time; the kernel it names
is an optional speed-up), and transformers' deprecation warning that peft triggers on every model it wraps.
"""

import logging
import warnings

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
