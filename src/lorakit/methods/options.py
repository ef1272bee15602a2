"""MethodOptions: the size knobs of the baseline methods, and the Export that saves what a method trained."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from lorakit.core.errors import ConfigError
from lorakit.train.methods import Export

if TYPE_CHECKING:
    from lorakit.train.config import RunConfig


@dataclass(frozen=True)
class MethodOptions:
    """Sizes of the non-LoRA methods (LoRA's rank lives in LoraConfig)."""

    bottleneck: int = 16
    """r of the adapter methods: each adapter maps d -> r -> d (Houlsby et al., 2019)."""
    prefix_length: int = 16
    """l_p of the prefix methods: trainable positions prepended to every input (Li & Liang, 2021)."""

    def __post_init__(self) -> None:
        problems = [f"{f.name} must be a positive integer (got {getattr(self, f.name)!r})"
                    for f in dataclasses.fields(self)
                    if isinstance(getattr(self, f.name), bool) or not isinstance(getattr(self, f.name), int)
                    or getattr(self, f.name) < 1]
        if problems:
            raise ConfigError("invalid MethodOptions:\n  - " + "\n  - ".join(problems))


DEFAULT = MethodOptions()
"""The options a method uses when none are given (e.g. `lorakit train --method adapter-h`)."""


def method_info(method: str, options: MethodOptions, config: RunConfig) -> dict[str, Any]:
    """What load_method needs to rebuild a method's modules before loading its tensors."""
    return {"format": "lorakit-method/1", "method": method, "options": dataclasses.asdict(options),
            "lora": config.lora.to_dict()}


def trained_export(method: str, options: MethodOptions, config: RunConfig) -> Export:
    """Save every trainable parameter plus the method's name and options (methods/files.py)."""
    from lorakit.methods.files import save_trained

    info = method_info(method, options, config)

    def write(model: nn.Module, directory: Path) -> None:
        save_trained(model, directory, info)

    return Export("adapter", write)

