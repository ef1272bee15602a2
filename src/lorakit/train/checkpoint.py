"""Resumable checkpoints: every file is written into a temporary directory that is renamed into place, so a
checkpoint directory either exists complete or not at all, whenever the process dies.

Layout of run_dir/checkpoints/step-00000100/:
  adapter/ or model/        the method's export (PEFT adapter, or a save_pretrained directory)
  trainable.safetensors     every trainable parameter by name: what resume loads back
  optimizer.pt              AdamW's state, read back with torch.load(weights_only=True): no code is unpickled
  state.json                step, data position, best metric so far, seed

The learning-rate schedule is a pure function of the step, and every random draw is seeded from (seed, step,
rank), so the step number restores both; no scheduler or RNG state needs saving.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.core.errors import LoraError
from lorakit.models.cache import write_atomically
from lorakit.train.methods import Export

STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(LoraError):
    """A checkpoint does not fit the model or optimizer it is resumed into."""


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that trains, by name, detached on the CPU."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, export: Export, state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoints/step-<state['step']> atomically and delete all but the `keep` newest."""

    def write(tmp: Path) -> None:
        export.write(model, tmp / export.name)
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        (tmp / "optimizer.pt").write_bytes(buffer.getvalue())
        (tmp / "state.json").write_text(json.dumps(state, indent=2))

    final = write_atomically(run_dir / "checkpoints" / f"step-{state['step']:08d}", write)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_export(directory: Path, model: nn.Module, export: Export, info: dict[str, Any]) -> Path:
    """Write the method's export plus info.json into `directory` (e.g. run_dir/best), replacing it atomically."""

    def write(tmp: Path) -> None:
        export.write(model, tmp / export.name)
        (tmp / "info.json").write_text(json.dumps(info, indent=2))

    return write_atomically(directory, write)


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints of a run, oldest first."""
    root = run_dir / "checkpoints"
    found = [p for p in root.iterdir() if STEP_DIR.fullmatch(p.name)] if root.is_dir() else []
    return sorted(found, key=lambda p: int(STEP_DIR.fullmatch(p.name).group(1)))


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a checkpoint's trainable parameters and optimizer state into the prepared model; returns its state."""
    saved = load_file(str(path / "trainable.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise CheckpointError(
            f"{path} was written for different trainable parameters (missing {missing[:3]}, unexpected "
            f"{extra[:3]}); resume with the same method and config, or start a new run_dir."
        )
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != saved[name].shape:
                raise CheckpointError(f"{path}: {name} has shape {tuple(saved[name].shape)}, the model "
                                      f"{tuple(p.shape)}; resume with the same model and config.")
            p.copy_(saved[name])
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    return json.loads((path / "state.json").read_text())
