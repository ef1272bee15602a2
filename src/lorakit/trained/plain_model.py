"""Write base + adapter as one plain transformers model directory (what `lorakit merge` does)."""

from __future__ import annotations

import os
from pathlib import Path

import lorakit
from lorakit.core.atomic import write_atomically
from lorakit.core.errors import ConfigError


def merge_to_directory(
    model_name: str, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, kind: str | None = None,
    num_labels: int | None = None, overwrite: bool = False,
) -> Path:
    """Load the base, load and merge the adapter (LoRA or DoRA, finite-checked), unwrap, save_pretrained into
    `out_dir`.

    A non-empty `out_dir` is refused unless `overwrite`, before anything loads. The directory is written under a
    temporary name beside `out_dir` and renamed into place, so a crash never leaves a half-written model where a
    loader would pick it up, and an overwritten directory is removed only once the new one is complete.
    """
    from lorakit.core.io import is_dora
    from lorakit.methods import load_dora
    from lorakit.models import load

    out = Path(out_dir)
    check_output_directory(out, overwrite)
    model, tokenizer = load(model_name, kind=kind, num_labels=num_labels)
    name = load_dora(model, adapter_dir) if is_dora(adapter_dir) else lorakit.load_adapter(model, adapter_dir)
    lorakit.merge(model, name, safe=True)
    lorakit.unwrap(model)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return write_atomically(out, write)


def check_output_directory(out: Path, overwrite: bool) -> None:
    """Refuse to replace a file, or a non-empty directory unless `overwrite`: its contents would be deleted."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; give --out a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; choose another --out, or pass --overwrite to replace everything in "
                          "it with the merged model")
