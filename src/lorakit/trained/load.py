"""Finding and loading what a run trained: its base model, its weights (any method), and its data config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lorakit.core.errors import ConfigError
from lorakit.tasks import DataConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Target:
    """What to evaluate or generate with: a base model, an optional adapter on it, and the task's data."""

    model: str
    adapter: str | None
    data: DataConfig


def resolve(run: str | None = None, model: str | None = None, adapter: str | None = None,
            data: dict[str, Any] | None = None) -> Target:
    """Model, adapter and data config from a run directory (its config.yaml and its best, else final, weights),
    overridden by the explicit ones; without a run, `model` is required and `data` builds the data config."""
    base_model, weights_adapter, data_config = None, None, {}
    if run is not None:
        from lorakit.train.run import read_run_config

        config = read_run_config(run)
        weights = next((Path(run) / d for d in ("best", "final") if (Path(run) / d).is_dir()), None)
        if weights is None:
            raise ConfigError(f"{run} has no best/ or final/ weights yet; finish (or --resume) the run first")
        if (weights / "adapter").is_dir():
            base_model, weights_adapter = config.model.name, str(weights / "adapter")
        else:
            base_model = str(weights / "model")
        data_config = config.data.to_dict()
    model = model or base_model
    if model is None:
        raise ConfigError("say which model to use: --run RUN_DIR, or --model NAME_OR_DIR (plus --adapter DIR)")
    given = {k: v for k, v in (data or {}).items() if v is not None}
    if "task" in given and given["task"] != data_config.get("task"):
        data_config = {}  # another task than the run's: its data settings do not apply
    return Target(model, adapter or weights_adapter, DataConfig(**{**data_config, **given}))


def load_trained(
    model: str, adapter: str | Path | None, kind: str, num_labels: int | None, device: str = "auto",
    precision: str = "fp32",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A base model (built-in name or directory, e.g. a full fine-tune's) with an optional adapter on it, in eval
    mode on `device`.

    `adapter` is a LoRA directory (PEFT format) or a lorakit method's (lorakit_method.json: adapters, prefixes,
    BitFit, DoRA, ...; see load_weights). LoRA is merged (exact to fp32 rounding) so scoring runs at the base
    model's speed. precision "bf16" then casts every weight, the method's included, to bfloat16, about 1.7x faster
    on hardware with native bf16 and slightly different in the last bits; "auto" picks bf16 where it is native
    (lorakit.train.loop.uses_bf16), else fp32.
    """
    from lorakit.models import load, resolve_device
    from lorakit.train.loop import uses_bf16

    if precision not in ("fp32", "bf16", "auto"):
        raise ConfigError(f"precision must be fp32, bf16 or auto, got {precision!r}")
    base, tokenizer = load(model, kind=kind, num_labels=num_labels)
    if adapter is not None:
        load_weights(base, adapter)
    where = resolve_device(device)
    base = base.to(where)
    if uses_bf16(precision, where):
        base = base.to(torch.bfloat16)
    return base.eval(), tokenizer


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Put a trained adapter directory onto `model` (a fresh base) in place: a lorakit method's through
    lorakit.methods.load_method, merging its update where the method's is mergeable (the LoRA family's ΔW, DoRA's
    m ⊙ (W + ΔW)/‖W + ΔW‖; adapters and prefixes add modules, which stay); any other directory as a PEFT LoRA
    adapter, merged."""
    from lorakit.core.io import load_adapter
    from lorakit.core.merge import merge
    from lorakit.core.state import state_of
    from lorakit.methods import METHODS, load_method
    from lorakit.methods.files import METHOD_FILE

    if (Path(directory) / METHOD_FILE).is_file():
        if METHODS[load_method(model, directory)["method"]].mergeable:
            merge(model, state_of(model).active)
    else:
        merge(model, load_adapter(model, directory))
