"""lorakit: LoRA (Hu et al., 2021, arXiv 2106.09685) for PyTorch and transformers models."""

from lorakit.core.lazy import lazy_names

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_names(__name__, {
    "lorakit.core.config": ["LoraConfig"],
    "lorakit.core.errors": ["AdapterError", "AdapterFileError", "ConfigError", "LoraError", "MergeError",
                            "TargetError"],
    "lorakit.core.inject": ["adapter_rows", "delete_adapter", "disable_adapters", "inject", "set_active",
                            "set_trainable", "unwrap"],
    "lorakit.core.io": ["load_adapter", "save_adapter"],
    "lorakit.core.merge": ["combine", "delta_weight", "merge", "merged_weights", "unmerge"],
    "lorakit.core.params": ["adapter_report", "count_parameters"],
})

__all__ = [
    "AdapterError", "AdapterFileError", "ConfigError", "LoraConfig", "LoraError", "MergeError", "TargetError",
    "adapter_report", "adapter_rows", "combine", "count_parameters", "delete_adapter", "delta_weight",
    "disable_adapters", "inject", "load_adapter", "merge", "merged_weights", "save_adapter", "set_active",
    "set_trainable", "unmerge", "unwrap",
]
