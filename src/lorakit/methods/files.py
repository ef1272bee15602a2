"""Saving and loading what a method trained: the trainable tensors plus the method's name and options, and the
PEFT prompt-tuning format (`prompt_embeddings`, (num_virtual_tokens, hidden)) for input prompts.

A method directory holds lorakit_method.json ({"method", "options", "lora"}) and trained.safetensors (every
parameter that trained, by its name in the model). Prompt methods also write adapter_config.json and
adapter_model.safetensors, so `peft.PeftModel.from_pretrained` loads the prompt.
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

METHOD_FILE = "lorakit_method.json"
STATE_FILE = "trained.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


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


def save_prompt(model: nn.Module, directory: str | os.PathLike, prompt: torch.Tensor) -> None:
    """Write a (num_virtual_tokens, hidden) input prompt as a PEFT PROMPT_TUNING adapter."""
    config = getattr(model, "config", None)
    seq_cls = any(n in ("classifier", "score") for n, _ in model.named_children())
    peft_config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_CLS" if seq_cls else "CAUSAL_LM",
        "base_model_name_or_path": getattr(config, "_name_or_path", None) or None,
        "num_virtual_tokens": prompt.shape[0],
        "token_dim": prompt.shape[1],
        "num_transformer_submodules": 1,
        "num_attention_heads": getattr(config, "num_attention_heads", None),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "inference_mode": True,
        "revision": None,
    }
    out = Path(directory)
    atomic_write(out / PEFT_WEIGHTS, st_save({"prompt_embeddings": prompt.detach().to("cpu").contiguous().clone()},
                                             metadata={"format": "pt"}))
    atomic_write(out / PEFT_CONFIG, (json.dumps(peft_config, indent=2) + "\n").encode())


def read_prompt(directory: str | os.PathLike) -> torch.Tensor:
    """The (num_virtual_tokens, hidden) prompt of a PEFT PROMPT_TUNING directory (ours or PEFT's)."""
    d = Path(directory)
    try:
        config = json.loads((d / PEFT_CONFIG).read_text())
        tensors = st_load((d / PEFT_WEIGHTS).read_bytes())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterFileError(f"{d} is not a PEFT prompt-tuning directory ({e})") from e
    if config.get("peft_type") != "PROMPT_TUNING" or "prompt_embeddings" not in tensors:
        raise AdapterFileError(f"{d} holds a {config.get('peft_type')} adapter, not PROMPT_TUNING with "
                               "prompt_embeddings")
    return tensors["prompt_embeddings"]
