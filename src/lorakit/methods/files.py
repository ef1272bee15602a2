"""Saving and loading what a method trained: the trainable tensors plus the method's name and options, and input
prompts in PEFT's prompt-tuning format (core/io/peft.py knows that format).

A method directory holds lorakit_method.json ({"method", "options", "lora"}) and trained.safetensors (every
parameter that trained, by its name in the model). Prompt methods also write adapter_config.json and
adapter_model.safetensors, so `peft.PeftModel.from_pretrained` loads the prompt (and a classifier head).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from lorakit.core.errors import AdapterFileError
from lorakit.core.io import atomic_write
from lorakit.core.io import peft as peft_format
from lorakit.methods.blocks import head_names

METHOD_FILE = "lorakit_method.json"
STATE_FILE = "trained.safetensors"


def save_trained(model: nn.Module, directory: str | os.PathLike, info: dict[str, Any],
                 skip: tuple[str, ...] = ()) -> Path:
    """Write every trainable parameter (except names containing one of `skip`) and `info` to `directory`."""
    out = Path(directory)
    tensors = {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters()
               if p.requires_grad and not any(s in n for s in skip)}
    atomic_write(out / STATE_FILE, st_save(tensors, metadata={"format": "pt"}))
    atomic_write(out / METHOD_FILE, (json.dumps(info, indent=2) + "\n").encode())
    return out


def read_method(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(info, trained tensors) of a method directory written by save_trained."""
    d = Path(directory)
    if not (d / METHOD_FILE).is_file():
        raise AdapterFileError(f"{d / METHOD_FILE} is missing; pass a directory written by a lorakit method "
                               "(a run's final/adapter folder)")
    info = json.loads((d / METHOD_FILE).read_text())
    tensors = st_load((d / STATE_FILE).read_bytes()) if (d / STATE_FILE).is_file() else {}
    return info, tensors


def load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Copy saved tensors into the model's parameters of the same names; unknown names or shapes are refused
    before anything is copied."""
    params = dict(model.named_parameters())
    problems = [f"{k}: not in the model" for k in tensors if k not in params]
    problems += [f"{k}: shape {tuple(t.shape)} != model's {tuple(params[k].shape)}" for k, t in tensors.items()
                 if k in params and params[k].shape != t.shape]
    if problems:
        raise AdapterFileError(f"{where} does not fit this model (was it trained on another base?):\n  - "
                               + "\n  - ".join(problems[:10]))
    with torch.no_grad():
        for k, t in tensors.items():
            params[k].copy_(t)


def save_prompt(model: nn.Module, directory: str | os.PathLike, prompt: torch.Tensor, head: bool = True) -> None:
    """Write a (num_virtual_tokens, hidden) input prompt as a PEFT PROMPT_TUNING adapter, with the classification
    head (if any) unless `head` is False (when another adapter file holds it)."""
    write_files(directory, peft_format.prompt_tuning_files(model, prompt, head_state(model) if head else {}))


def read_prompt(directory: str | os.PathLike) -> torch.Tensor:
    """The (num_virtual_tokens, hidden) prompt of a PEFT PROMPT_TUNING directory (ours or PEFT's)."""
    return peft_format.read_prompt_tuning(directory)


def head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The classification head's tensors by parameter name ("score.weight"), or {} for an LM."""
    return {f"{name}.{k}": t for name in head_names(model) for k, t in model.get_submodule(name).state_dict().items()}


def write_files(directory: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Write each file name -> contents into `directory`, atomically per file."""
    for name, data in files.items():
        atomic_write(Path(directory) / name, data)
