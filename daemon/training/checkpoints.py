"""Checkpoints of one cycle's training, so a killed worker resumes where it stopped.

A checkpoint is a directory `step-<N>` holding the trainable (adapter) weights, the optimizer and LR
schedule state, and `state.json` with the loop's counters and the manifest that says which run it
belongs to: the cycle id, the snapshot id and a fingerprint of the data and every setting that shapes
the step plan. It is written into a temporary directory and renamed, so a kill mid-write leaves the
previous checkpoint intact. The data position needs no saving: the step plan is a pure function of the
seed, so resuming at step N replays the same rows from N on. A model sharded across ranks (FSDP2) is saved
whole, gathered from every rank, so a checkpoint resumes under any number of ranks, sharded or not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from daemon.training.distributed import gathered, shaped_like

log = logging.getLogger("daemon.training")
STATE_FILE = "state.json"
KEEP = 2  # the newest two: if the newest is unreadable the one before still is


def fingerprint(parts: dict[str, Any], files: list[Path]) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in files:
        with open(path, "rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, whole, on the CPU (a collective when the model is sharded: every rank calls it)."""
    return {name: gathered(p).detach().to("cpu", copy=True)
            for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = set(parameters) ^ set(state)
    if missing:
        raise ValueError(f"checkpoint does not match the adapter ({len(missing)} parameters differ)")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(shaped_like(state[name].to(parameter.dtype), parameter))


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with each sharded tensor whole (a collective when the model is sharded)."""
    saved = optimizer.state_dict()
    saved["state"] = {index: {key: gathered(value) if isinstance(value, torch.Tensor) else value
                              for key, value in values.items()}
                      for index, values in saved["state"].items()}
    return saved


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Loads a whole optimizer state; the moments of a sharded parameter become this rank's shard of them."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in saved["state"].items():
        parameter = parameters[index]
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape == parameter.shape:
                values[key] = shaped_like(value, parameter)
    optimizer.load_state_dict(saved)


class Checkpointer:
    """Saves and finds the checkpoints of one run in `directory`."""

    def __init__(self, directory: Path, manifest: dict[str, str]) -> None:
        self.directory = directory
        self.manifest = manifest

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        loop_state: dict[str, Any],
        best_weights: dict[str, torch.Tensor] | None,
        *,
        writer: bool = True,
    ) -> Path | None:
        """Every rank calls it (a sharded model is gathered from all of them); the writer writes the checkpoint."""
        weights, moments = trainable_state(model), optimizer_state(optimizer)
        if not writer:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step-{step:08d}"
        partial = self.directory / f".partial-step-{step:08d}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        torch.save(weights, partial / "adapter.pt")
        torch.save(moments, partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
        if best_weights is not None:
            torch.save(best_weights, partial / "best_adapter.pt")
        state = {"manifest": self.manifest, "step": step, "loop": loop_state}
        (partial / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        for item in partial.iterdir():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in self._complete()[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete checkpoint of this run; checkpoints of another run are removed."""
        for candidate in reversed(self._complete()):
            try:
                state = json.loads((candidate / STATE_FILE).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if state.get("manifest") != self.manifest:
                log.info(
                    "checkpoints in %s belong to another run (%s); starting fresh",
                    self.directory,
                    _difference(state.get("manifest") or {}, self.manifest),
                )
                self.remove_all()
                return None
            return candidate, state
        return None

    def restore(
        self, checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> dict[str, torch.Tensor] | None:
        """Loads weights, optimizer and schedule; returns the best weights saved with it, if any."""
        # onto this rank's own device: a checkpoint saved from cuda:0 would otherwise land every rank on cuda:0
        device = next((p.device for p in model.parameters() if p.requires_grad), torch.device("cpu"))
        load_trainable_state(model, torch.load(checkpoint / "adapter.pt", map_location=device, weights_only=True))
        load_optimizer_state(optimizer, torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=True))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", map_location="cpu", weights_only=True))
        best = checkpoint / "best_adapter.pt"
        return torch.load(best, map_location=device, weights_only=True) if best.exists() else None

    def remove_all(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _complete(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("step-*") if (p / STATE_FILE).is_file())


def _difference(found: dict[str, str], wanted: dict[str, str]) -> str:
    keys = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    return ", ".join(f"{k} differs" for k in keys) or "unknown"
