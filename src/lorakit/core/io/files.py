"""Saving and loading adapter directories (adapter_config.json + adapter_model.safetensors + lorakit.json).

With io/peft.py, this is the only code that knows PEFT's file format.

Our spellings (rank, alpha, dropout, targets) map to PEFT's (r, lora_alpha, lora_dropout, target_modules) here and
nowhere else. lorakit's extra facts (fused slices, base fingerprint, our config) go in lorakit.json beside them.
An adapter with DoRA magnitudes (layers.MAGNITUDE) is saved as PEFT's DoRA (use_dora) and loads through
load_dora_adapter; load_adapter takes plain LoRA only.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from lorakit.core.atomic import atomic_write
from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterError, AdapterFileError
from lorakit.core.inject import inject_factors, set_trainable
from lorakit.core.io import peft as peft_keys
from lorakit.core.io.peft import CONFIG_FILE, WEIGHTS_FILE
from lorakit.core.layers import MAGNITUDE, SavedModule
from lorakit.core.state import state_of, wrappers

LORAKIT_FILE = "lorakit.json"
PREFIX = "base_model.model."


def fingerprint(model: nn.Module) -> dict:
    """Architecture facts an adapter depends on; compared on load to catch adapters for another base model."""
    cfg = getattr(model, "config", None)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "n_embd", "n_layer")
    return {k: getattr(cfg, k) for k in keys if cfg is not None and getattr(cfg, k, None) is not None}


def save_adapter(model: nn.Module, directory: str | os.PathLike, name: str = "default") -> Path:
    """Write adapter `name` as a PEFT LoRA directory (loadable by peft.PeftModel.from_pretrained); atomic per file.

    A DoRA adapter (magnitudes m on its layers) is written as PEFT's DoRA: use_dora plus each module's
    `lora_magnitude_vector`.
    """
    state = state_of(model)
    state.require(name)
    config = state.configs[name]
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    slices: dict[str, list[bool]] = {}
    saved: list[str] = []
    fan_in_fan_out = False
    for path, m in wrappers(model):
        if isinstance(m, SavedModule):
            if name in m.copies:
                saved.append(path)
                for k, v in m.copies[name].state_dict().items():
                    tensors[f"{PREFIX}{path}.{k}"] = v
            continue
        if name not in m.lora_A:
            continue
        a, b = peft_keys.export_factors(m, name)
        for key, t in peft_keys.lora_keys(path, m, a, b).items():
            tensors[PREFIX + key] = t
        if name in getattr(m, MAGNITUDE, ()):
            tensors[PREFIX + path + peft_keys.MAGNITUDE_SUFFIX] = getattr(m, MAGNITUDE)[name]
        r = a.shape[0]
        ranks[path] = r
        alphas[path] = m.scaling[name] * (math.sqrt(r) if config.rslora else r)
        fan_in_fan_out |= bool(getattr(m, "transposed", False))
        if getattr(m, "slices", None):
            slices[path] = list(m.slices)
    dora = sum(k.endswith(peft_keys.MAGNITUDE_SUFFIX) for k in tensors)
    if dora not in (0, len(ranks)):
        raise AdapterFileError(f"adapter {name!r} has DoRA magnitudes on {dora} of its {len(ranks)} layers; PEFT's "
                               "DoRA format needs one on every layer or none")
    for pname, p in model.named_parameters():
        if peft_keys.is_trained_bias(pname, config.bias, ranks):
            tensors[PREFIX + pname] = p
    rank_pattern = {p: r for p, r in ranks.items() if r != config.rank}
    alpha_pattern = {p: a for p, a in alphas.items() if not math.isclose(a, config.alpha, rel_tol=1e-6)}
    peft_config = {
        "peft_type": "LORA",
        "task_type": peft_keys.task_type(model),
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(ranks),
        "bias": config.bias,
        "fan_in_fan_out": fan_in_fan_out,
        "use_rslora": config.rslora,
        "modules_to_save": saved or None,
        "init_lora_weights": "gaussian" if config.init == "gaussian" else True,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "layers_to_transform": None,
        "layers_pattern": None,
        "use_dora": dora > 0,
        "inference_mode": True,
        "revision": None,
    }
    meta = {
        "format": "lorakit-adapter/1",
        "name": name,
        "config": config.to_dict(),
        "slices": slices,
        "base": fingerprint(model),
        "pissa_converted": config.init == "pissa",
    }
    out = Path(directory)
    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(out / WEIGHTS_FILE, st_save(data, metadata={"format": "pt"}))
    atomic_write(out / LORAKIT_FILE, json.dumps(meta, indent=2).encode())
    atomic_write(out / CONFIG_FILE, json.dumps(peft_config, indent=2).encode())
    return out


def read_adapter(directory: str | os.PathLike, dora: bool = False) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(PEFT config, lorakit metadata or {}, tensors) of a LoRA (or, with `dora`, DoRA) adapter directory, with clear
    errors for bad files."""
    d = Path(directory)
    if not d.is_dir():
        raise AdapterFileError(f"adapter directory {d} does not exist; pass the folder holding {CONFIG_FILE}")
    config = _read_json(d / CONFIG_FILE, required=True)
    meta = _read_json(d / LORAKIT_FILE, required=False)
    wpath = d / WEIGHTS_FILE
    if not wpath.exists():
        if (d / "adapter_model.bin").exists():
            raise AdapterFileError(
                f"{d} holds adapter_model.bin, a pickle file; lorakit never unpickles weights. Convert it with "
                f"PEFT in a trusted environment (save_pretrained(..., safe_serialization=True))"
            )
        raise AdapterFileError(f"{wpath} is missing; an adapter directory needs {WEIGHTS_FILE}")
    try:
        tensors = st_load(wpath.read_bytes())
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        raise AdapterFileError(
            f"{wpath} is not a valid safetensors file (truncated or corrupted?): {e}. Re-save the adapter."
        ) from e
    peft_keys.check_config(config, d / CONFIG_FILE, dora)
    return config, meta, tensors


def is_dora(directory: str | os.PathLike) -> bool:
    """Whether an adapter directory is PEFT's DoRA (use_dora), which loads through methods.load_dora."""
    return bool(_read_json(Path(directory) / CONFIG_FILE, required=True).get("use_dora"))


def _read_json(path: Path, required: bool) -> dict:
    if not path.exists():
        if required:
            raise AdapterFileError(f"{path} is missing; is {path.parent} a LoRA adapter directory?")
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{path} is not valid JSON ({e}); re-save the adapter") from e
    if not isinstance(data, dict):
        raise AdapterFileError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, name: str | None = None, trainable: bool = False
) -> str:
    """Load a PEFT/lorakit LoRA directory onto `model` (plain or already wrapped) as adapter `name`; returns it.

    Everything is checked (keys, shapes, base model) before the model is touched, so a refused load changes
    nothing. The first adapter on a model becomes active; with trainable=True this adapter's parameters train.
    """
    return _load(model, directory, name, trainable, dora=False)[0]


def load_dora_adapter(
    model: nn.Module, directory: str | os.PathLike, name: str | None = None
) -> tuple[str, dict[str, torch.Tensor]]:
    """Load a DoRA directory's LoRA factors like load_adapter; returns (name, {module path: magnitude m (out,)}).

    The magnitudes are returned, not installed: DoRA's forward lives in lorakit.methods.variants (load_dora).
    """
    return _load(model, directory, name, False, dora=True)


def restore_adapter(model: nn.Module, directory: str | os.PathLike, name: str = "default") -> None:
    """Copy a saved adapter's weights into adapter `name`, already on `model`, in place.

    What resuming training needs: an optimizer holds these very parameters, so they must be refilled, not replaced.
    The file must cover exactly the adapter's modules with its shapes and scales (as save_adapter wrote it from
    the same config); otherwise the error lists every difference and nothing changes.
    """
    state = state_of(model)
    state.require(name)
    layers = {p: m for p, m in wrappers(model) if not isinstance(m, SavedModule) and name in m.lora_A}
    copies = {p: m.copies[name] for p, m in wrappers(model) if isinstance(m, SavedModule) and name in m.copies}
    if any(name in m.merged for m in layers.values()):
        raise AdapterError(f"adapter {name!r} is merged; lorakit.unmerge(model) before restoring its weights")
    dora = any(name in getattr(m, MAGNITUDE, ()) for m in layers.values())
    config, meta, tensors = read_adapter(directory, dora)
    plan = peft_keys.plan_load(model, config, meta, tensors, fingerprint(model), Path(directory))
    biases = {peft_keys.plain_name(n) for n, _ in model.named_parameters()
              if peft_keys.is_trained_bias(n, state.configs[name].bias, layers)}
    problems = [f"{p}: adapter {name!r} has this module, the file does not"
                for p in sorted(set(layers) - set(plan.modules))]
    problems += [f"{p}: in the file, not in adapter {name!r}" for p in sorted(set(plan.modules) - set(layers))]
    problems += [f"modules_to_save {p}: in only one of the file and adapter {name!r}"
                 for p in sorted(set(copies) ^ set(plan.saved))]
    problems += [f"bias {p}: in only one of the file and adapter {name!r}" for p in sorted(biases ^ set(plan.biases))]
    factors = {p: _own_factors(p, layers[p], name, *plan.modules[p], problems)
               for p in sorted(set(layers) & set(plan.modules))}
    if problems:
        raise AdapterFileError(f"{directory} does not hold adapter {name!r} of this model (saved from another "
                               "config?):\n  - " + "\n  - ".join(problems[:20]))
    params = {peft_keys.plain_name(n): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for path, (a, b) in factors.items():
            m = layers[path]
            m.lora_A[name].copy_(a)
            m.lora_B[name].copy_(b)
            if dora:
                getattr(m, MAGNITUDE)[name].copy_(plan.magnitudes[path])
        for path, sd in plan.saved.items():
            copies[path].load_state_dict(sd)
        for pname, t in plan.biases.items():
            params[pname].copy_(t)
    state.version += 1  # the adapter's weights changed: layers rebuild what they cached from them


def _own_factors(path: str, m: nn.Module, name: str, a: torch.Tensor, b: torch.Tensor, scale: float,
                 problems: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A file's (A, B) for layer `m` in the adapter's own layout; a mismatch with the adapter goes to problems."""
    if name in getattr(m, "pissa", ()):  # saved as [A; A0], [B, -B0] (peft.export_factors): the trained part first
        r = m.lora_A[name].shape[0]
        a, b = a[:r], b[:, :r]
    if a.shape != m.lora_A[name].shape or b.shape != m.lora_B[name].shape:
        problems.append(f"{path}: A {tuple(a.shape)} / B {tuple(b.shape)} in the file, but the adapter has "
                        f"{tuple(m.lora_A[name].shape)} / {tuple(m.lora_B[name].shape)}")
    elif not math.isclose(scale, m.scaling[name], rel_tol=1e-6):
        problems.append(f"{path}: scale {scale:g} in the file, {m.scaling[name]:g} in the adapter")
    return a, b


def _load(model: nn.Module, directory: str | os.PathLike, name: str | None, trainable: bool,
          dora: bool) -> tuple[str, dict[str, torch.Tensor]]:
    config, meta, tensors = read_adapter(directory, dora)
    state = getattr(model, "_lorakit", None)
    taken = set(state.configs) if state is not None else set()
    if name is None:
        numbered = (f"adapter{i}" for i in itertools.count(len(taken)))
        name = next(n for n in itertools.chain(("default", Path(directory).resolve().name), numbered)
                    if n not in taken)
    plan = peft_keys.plan_load(model, config, meta, tensors, fingerprint(model), Path(directory))
    lora_config = LoraConfig(
        rank=int(config.get("r", 8)),
        alpha=float(config.get("lora_alpha", 8)),
        dropout=float(config.get("lora_dropout", 0.0) or 0.0),
        targets=tuple(plan.modules),
        bias=config.get("bias", "none"),
        rslora=bool(config.get("use_rslora", False)),
        modules_to_save=tuple(plan.saved),
        slices={p: tuple(s) for p, s in plan.slices.items()},
        init="gaussian" if config.get("init_lora_weights") == "gaussian" else "kaiming",
    )
    fresh = state is None
    inject_factors(model, lora_config, name, plan.modules)
    with torch.no_grad():
        for path, sd in plan.saved.items():
            model.get_submodule(path).copies[name].load_state_dict(sd)
        params = {peft_keys.plain_name(n): p for n, p in model.named_parameters()} if plan.biases else {}
        for pname, t in plan.biases.items():
            params[pname].copy_(t)
    if trainable:
        set_trainable(model, name)
    elif fresh:
        for p in model.parameters():
            p.requires_grad_(False)
    return name, plan.magnitudes
