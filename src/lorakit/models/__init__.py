"""Resolving built-in model names and local directories to (model, tokenizer), and device names to devices."""

from lorakit.models.cache import cache_root
from lorakit.models.device import resolve_device
from lorakit.models.errors import ModelError
from lorakit.models.loader import load
from lorakit.models.registry import BUILTINS, KINDS, Builtin, Kind, builtin

__all__ = [
    "BUILTINS",
    "KINDS",
    "Builtin",
    "Kind",
    "ModelError",
    "builtin",
    "cache_root",
    "load",
    "resolve_device",
]
