"""Resolving built-in model names and local directories to (model, tokenizer), and device names to devices."""

from lorakit.core.lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "lorakit.models.cache": ["cache_root"],
    "lorakit.models.config": ["ModelConfig"],
    "lorakit.models.device": ["resolve_device"],
    "lorakit.models.errors": ["ModelError"],
    "lorakit.models.loader": ["load"],
    "lorakit.models.registry": ["BUILTINS", "KINDS", "Builtin", "Kind", "builtin"],
})

__all__ = ["BUILTINS", "KINDS", "Builtin", "Kind", "ModelConfig", "ModelError", "builtin", "cache_root", "load",
           "resolve_device"]
