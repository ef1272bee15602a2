"""lorakit: LoRA (Hu et al., 2021, arXiv 2106.09685) for PyTorch and transformers models.

The public names below are imported on first use (PEP 562), so `import lorakit.cli` and `lorakit --help` do not
pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "LoraConfig": "lorakit.core.config",
    **dict.fromkeys(("AdapterError", "AdapterFileError", "ConfigError", "LoraError", "MergeError", "TargetError"),
                    "lorakit.core.errors"),
    **dict.fromkeys(("adapter_rows", "delete_adapter", "disable_adapters", "inject", "set_active", "set_trainable",
                     "unwrap"), "lorakit.core.inject"),
    **dict.fromkeys(("load_adapter", "save_adapter"), "lorakit.core.io"),
    **dict.fromkeys(("combine", "delta_weight", "merge", "merged_weights", "unmerge"), "lorakit.core.merge"),
    **dict.fromkeys(("adapter_report", "count_parameters"), "lorakit.core.params"),
}

__all__ = [
    "AdapterError", "AdapterFileError", "ConfigError", "LoraConfig", "LoraError", "MergeError", "TargetError",
    "adapter_report", "adapter_rows", "combine", "count_parameters", "delete_adapter", "delta_weight",
    "disable_adapters", "inject", "load_adapter", "merge", "merged_weights", "save_adapter", "set_active",
    "set_trainable", "unmerge", "unwrap",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lorakit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:
    from lorakit.core.config import LoraConfig
    from lorakit.core.errors import AdapterError, AdapterFileError, ConfigError, LoraError, MergeError, TargetError
    from lorakit.core.inject import (
        adapter_rows,
        delete_adapter,
        disable_adapters,
        inject,
        set_active,
        set_trainable,
        unwrap,
    )
    from lorakit.core.io import load_adapter, save_adapter
    from lorakit.core.merge import combine, delta_weight, merge, merged_weights, unmerge
    from lorakit.core.params import adapter_report, count_parameters
