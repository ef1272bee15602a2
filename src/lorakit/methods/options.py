"""What a method's directory records to rebuild it (its name, the run's method_options and lora sections), and the
Export that saves every parameter a method trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from lorakit.train.methods import Export

if TYPE_CHECKING:
    from lorakit.train.config import RunConfig


def method_info(method: str, config: RunConfig) -> dict[str, Any]:
    """What load_method needs to rebuild a method's modules before loading its tensors."""
    return {"format": "lorakit-method/1", "method": method, "options": dataclasses.asdict(config.method_options),
            "lora": config.lora.to_dict()}


def trained_export(method: str, config: RunConfig) -> Export:
    """Save every trainable parameter plus the method's name and options (methods/files.py)."""
    from lorakit.methods.files import save_trained

    info = method_info(method, config)

    def write(model: nn.Module, directory: Path) -> None:
        save_trained(model, directory, info)

    return Export("adapter", write)
