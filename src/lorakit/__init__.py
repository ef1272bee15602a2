"""lorakit: LoRA (Hu et al., 2021, arXiv 2106.09685) for PyTorch and transformers models."""

from lorakit.core.config import LoraConfig
from lorakit.core.errors import (
    AdapterError,
    AdapterFileError,
    ConfigError,
    LoraError,
    MergeError,
    TargetError,
)
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

__version__ = "0.1.0"

__all__ = [
    "AdapterError",
    "AdapterFileError",
    "ConfigError",
    "LoraConfig",
    "LoraError",
    "MergeError",
    "TargetError",
    "adapter_report",
    "adapter_rows",
    "combine",
    "count_parameters",
    "delete_adapter",
    "delta_weight",
    "disable_adapters",
    "inject",
    "load_adapter",
    "merge",
    "merged_weights",
    "save_adapter",
    "set_active",
    "set_trainable",
    "unmerge",
    "unwrap",
]
