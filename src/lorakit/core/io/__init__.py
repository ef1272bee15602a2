"""Adapter files: PEFT's format on disk (io/peft.py knows its keys), written atomically, never unpickled."""

from lorakit.core.io.files import (
    atomic_write,
    fingerprint,
    is_dora,
    load_adapter,
    load_dora_adapter,
    read_adapter,
    restore_adapter,
    save_adapter,
)

__all__ = ["atomic_write", "fingerprint", "is_dora", "load_adapter", "load_dora_adapter", "read_adapter",
           "restore_adapter", "save_adapter"]
