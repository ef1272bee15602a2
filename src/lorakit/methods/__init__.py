"""Fine-tuning methods, LoRA's and the baselines it is compared with (Hu et al., 2021, section 5.1): full
fine-tuning, FT-top2, BitFit, Houlsby and Lin adapters, PreEmbed/PreLayer/prompt tuning, and the LoRA variants
rsLoRA, DoRA, PiSSA and LoRA+prefix.

`METHODS[name].prepare(model, lora_config, method_options)` prepares a model in place and returns how its trained
weights are saved (an Export); `load_method` puts a saved one back on a fresh base model.
"""

from lorakit.core.lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "lorakit.methods.counts": ["adapter_count", "lora_count", "prefix_embed_count", "prefix_layer_count",
                               "trainable_count"],
    "lorakit.methods.export": ["Export", "adapter_export", "default_export", "full_export"],
    "lorakit.methods.options": ["MethodOptions"],
    "lorakit.methods.registry": ["METHODS", "MethodSpec", "check_names", "load_method", "method", "unused_options"],
    "lorakit.methods.variants": ["load_dora"],
})

__all__ = [
    "METHODS", "Export", "MethodOptions", "MethodSpec", "adapter_count", "adapter_export", "check_names",
    "default_export", "full_export", "load_dora", "load_method", "lora_count", "method", "prefix_embed_count",
    "prefix_layer_count", "trainable_count", "unused_options",
]
