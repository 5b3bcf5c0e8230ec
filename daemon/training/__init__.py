"""The training worker: the only package that imports torch, transformers and peft.

Runs as a child process, `python -m daemon.training <verb>`:
- `make-base-model DIR`: builds the tiny Llama-architecture demo model and its tokenizer (base_model.py).
- `train --spec SPEC.json`: trains and evaluates a LoRA adapter, writes it and `result.json` (lora_recipe.py).
"""
