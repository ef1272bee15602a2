"""Write base + adapter as one plain transformers model directory (what `lorakit merge` does)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import lorakit


def merge_to_directory(
    model_name: str, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, kind: str | None = None,
    num_labels: int | None = None,
) -> Path:
    """Load the base, load and merge the adapter (LoRA or DoRA, finite-checked), unwrap, save_pretrained into
    `out_dir`.

    The directory is written under a temporary name beside `out_dir` and renamed into place, so a crash never
    leaves a half-written model where a loader would pick it up.
    """
    from lorakit.core.io import is_dora
    from lorakit.methods import load_dora
    from lorakit.models import load

    model, tokenizer = load(model_name, kind=kind, num_labels=num_labels)
    name = load_dora(model, adapter_dir) if is_dora(adapter_dir) else lorakit.load_adapter(model, adapter_dir)
    lorakit.merge(model, name, safe=True)
    lorakit.unwrap(model)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
