"""How a method's trained weights are written: an Export per method, into a checkpoint's sub-directory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.methods.options import MethodOptions


@dataclass(frozen=True)
class Export:
    """How a trained model is written: `write(model, directory)`, into a sub-directory called `name`."""

    name: str
    """Sub-directory of each checkpoint holding the weights, e.g. 'adapter' or 'model'."""
    write: Callable[[nn.Module, Path], None]


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


def method_info(method: str, lora: LoraConfig, options: MethodOptions) -> dict[str, Any]:
    """What load_method needs to rebuild a method's modules before loading its tensors (lorakit_method.json)."""
    return {"format": "lorakit-method/1", "method": method, "options": options.to_dict(), "lora": lora.to_dict()}


def trained_export(method: str, lora: LoraConfig, options: MethodOptions) -> Export:
    """Save every trainable parameter plus the method's name and options (methods/files.py)."""
    from lorakit.methods.files import save_trained

    info = method_info(method, lora, options)

    def write(model: nn.Module, directory: Path) -> None:
        save_trained(model, directory, info)

    return Export("adapter", write)
