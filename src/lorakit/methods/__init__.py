"""Baselines for comparison with LoRA (Hu et al., 2021, section 5.1): full fine-tuning, FT-top2, BitFit, Houlsby
and Lin adapters, PreEmbed/PreLayer/prompt tuning, and the LoRA variants rsLoRA, DoRA, PiSSA and LoRA+prefix.

Each is a train-loop Method: `ALL[name](model, run_config)` prepares the model in place (sized by run_config.lora
or run_config.method_options) and returns how its trained weights are saved; `load_method` puts a saved one back
on a fresh base model.
"""

import lorakit.train  # noqa: F401  (first: train.methods registers these methods and must define Export first)
from lorakit.methods.counts import adapter_count, lora_count, prefix_embed_count, prefix_layer_count, trainable_count
from lorakit.methods.registry import ALL, LORA_FAMILY, check_names, load_method
from lorakit.methods.variants import load_dora
from lorakit.train.config import MethodOptions

__all__ = [
    "ALL",
    "LORA_FAMILY",
    "MethodOptions",
    "adapter_count",
    "check_names",
    "load_dora",
    "load_method",
    "lora_count",
    "prefix_embed_count",
    "prefix_layer_count",
    "trainable_count",
]
