"""Fine-tuning methods: each prepares a model for training and says how its trained weights are saved.

The loop knows only this interface, so a new method (BitFit, adapters, prefix tuning) is one function that sets
`requires_grad` (and adds modules) plus an Export, registered in METHODS; nothing in the loop changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from lorakit.train.config import RunConfig


@dataclass(frozen=True)
class Export:
    """How a trained model is written: `write(model, directory)`, into a sub-directory called `name`."""

    name: str
    """Sub-directory of each checkpoint holding the weights, e.g. 'adapter' or 'model'."""
    write: Callable[[nn.Module, Path], None]


Method = Callable[[nn.Module, "RunConfig"], Export]
"""Prepares `model` in place for training (what trains, what is added) and returns how to save it."""


def adapter_export(name: str = "default") -> Export:
    """Save lorakit adapter `name` in PEFT's format (with modules_to_save, e.g. a classifier head)."""
    from lorakit.core.io import save_adapter

    def write(model: nn.Module, directory: Path) -> None:
        save_adapter(model, directory, name)

    return Export("adapter", write)


def full_export() -> Export:
    """Save the whole model with save_pretrained (safetensors), loadable by from_pretrained."""

    def write(model: nn.Module, directory: Path) -> None:
        if not hasattr(model, "save_pretrained"):
            raise TypeError(f"{type(model).__name__} has no save_pretrained; full fine-tuning saves transformers "
                            "models only")
        model.save_pretrained(directory, safe_serialization=True)

    return Export("model", write)


def default_export(model: nn.Module) -> Export:
    """adapter_export for a model with lorakit adapters (its active adapter), else full_export."""
    state = getattr(model, "_lorakit", None)
    return adapter_export(state.active) if state is not None and state.active else full_export()


def lora(model: nn.Module, config: RunConfig) -> Export:
    """Inject adapter 'default' per config.lora; only it (and its modules_to_save) trains."""
    from lorakit.core.inject import inject

    inject(model, config.lora, "default")
    return adapter_export("default")


def full(model: nn.Module, config: RunConfig) -> Export:
    """Train every parameter (the paper's FT baseline)."""
    model.requires_grad_(True)
    return full_export()


from lorakit.methods.registry import ALL as COMPARISON_METHODS  # noqa: E402  (they import Export from above)

METHODS: dict[str, Method] = {"lora": lora, "full": full,
                              **{k: m for k, m in COMPARISON_METHODS.items() if k not in ("lora", "full")}}
"""Method name (RunConfig.method, `--method`) -> function."""
