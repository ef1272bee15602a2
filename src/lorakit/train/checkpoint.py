"""Resumable checkpoints: every file is written into a temporary directory that is renamed into place, so a
checkpoint directory either exists complete or not at all, whenever the process dies.

Layout of run_dir/checkpoints/step-00000100/:
  adapter/ or model/        the method's export (PEFT adapter, or a save_pretrained directory)
  trainable.safetensors     every trainable parameter by name: what resume loads back
  optimizer.pt              AdamW's state, read back with torch.load(weights_only=True): no code is unpickled
  state.json                step, data position, best metric so far, seed
  manifest.json             every other file's size and SHA-256, written last: what resume verifies

A checkpoint whose files no longer match its manifest (truncated or corrupted on disk after it was written) is
skipped on resume with a warning that names the file, and the newest valid one is used instead.

The learning-rate schedule is a pure function of the step, and every random draw is seeded from (seed, step,
rank), so the step number restores both; no scheduler or RNG state needs saving.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.core.atomic import write_atomically
from lorakit.core.errors import LoraError
from lorakit.methods.export import Export

STEP_DIR = re.compile(r"step-(\d+)")
MANIFEST = "manifest.json"
REQUIRED = ("trainable.safetensors", "optimizer.pt", "state.json")


class CheckpointError(LoraError):
    """A checkpoint does not fit the model or optimizer it is resumed into, or none is intact."""


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint's files do not match its manifest; resume uses an older one."""


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
        write_manifest(tmp)

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


def write_manifest(directory: Path) -> None:
    """Record the size and SHA-256 of every file under `directory` in its manifest.json."""
    files = {str(f.relative_to(directory)): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
             for f in sorted(directory.rglob("*")) if f.is_file() and f.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def damage(path: Path) -> str | None:
    """What is wrong with checkpoint `path` (a missing, truncated or altered file), or None if it is intact.

    A checkpoint without a manifest (written before lorakit wrote them) is checked for its required files only.
    """
    manifest = path / MANIFEST
    if not manifest.is_file():
        missing = [name for name in REQUIRED if not (path / name).is_file()]
        return f"{', '.join(missing)} missing" if missing else None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    for name in REQUIRED:
        if name not in files:
            return f"{MANIFEST} does not list {name}"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{name} is {f.stat().st_size} bytes where {want['bytes']} were written (truncated?)"
        if _sha256(f) != want["sha256"]:
            return f"{name} does not hold the bytes that were written (its SHA-256 differs)"
    return None


def newest_valid(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of a run, warning about each newer damaged one it passes over; None if the
    run has no checkpoint. Raises CheckpointError when every checkpoint is damaged."""
    problems = []
    for path in reversed(checkpoints(run_dir)):
        problem = damage(path)
        if problem is None:
            for bad in problems:
                warnings.warn(f"{bad}; resuming from {path.name} instead", DamagedCheckpointWarning, stacklevel=2)
            return path
        problems.append(f"checkpoint {path} is damaged: {problem}")
    if problems:
        raise CheckpointError("no intact checkpoint to resume from:\n  - " + "\n  - ".join(problems)
                              + "\nRestore the files, or start again in a new run_dir.")
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


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
