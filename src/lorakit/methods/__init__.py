"""Baselines for comparison with LoRA (Hu et al., 2021, section 5.1): full fine-tuning, FT-top2, BitFit, Houlsby
and Lin adapters, PreEmbed/PreLayer/prompt tuning, and the LoRA variants rsLoRA, DoRA, PiSSA and LoRA+prefix.

Each is a train-loop Method: `ALL[name](model, run_config, options)` prepares the model in place and returns
how its trained weights are saved; `load_method` puts a saved one back on a fresh base model.
"""

import lorakit.train  # noqa: F401  (first: train.methods registers these methods and must define Export first)
from lorakit.methods.counts import adapter_count, lora_count, prefix_embed_count, prefix_layer_count, trainable_count
from lorakit.methods.options import MethodOptions
from lorakit.methods.registry import ALL, LORA_FAMILY, check_names, load_method, method

__all__ = [
    "ALL",
    "LORA_FAMILY",
    "MethodOptions",
    "adapter_count",
    "check_names",
    "load_method",
    "lora_count",
    "method",
    "prefix_embed_count",
    "prefix_layer_count",
    "trainable_count",
]
