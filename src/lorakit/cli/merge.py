"""lorakit merge: fold an adapter into its base and write a plain transformers model directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from lorakit.cli.options import add_flat, options
from lorakit.core.schema import Schema


class MergeOptions(Schema):
    """What to merge and where the model goes."""

    model: str
    """The base model: built-in name or local directory."""
    adapter: str
    """Adapter directory (PEFT format; LoRA or DoRA)."""
    out: str
    """Output directory (written whole, atomically); must be new or empty."""
    overwrite: bool = False
    """Replace a non-empty --out and everything in it."""
    kind: Literal["causal-lm", "seq-cls", "encoder"] | None = None
    """Model head (default: from the adapter's task_type)."""
    num_labels: int | None = None
    """Classes of a seq-cls adapter (default: read from its head)."""


def add_parser(p: argparse.ArgumentParser) -> None:
    add_flat(p, MergeOptions)


def run(args: argparse.Namespace) -> int:
    from lorakit.core.io import is_dora, read_adapter
    from lorakit.trained import check_output_directory, merge_to_directory

    o = options(args, MergeOptions)
    check_output_directory(Path(o.out), o.overwrite)
    config, _, tensors = read_adapter(o.adapter, dora=is_dora(o.adapter))
    kind, num_labels = o.kind, o.num_labels
    if kind is None and config.get("task_type") == "SEQ_CLS":
        kind = "seq-cls"
    if kind == "seq-cls" and num_labels is None:
        heads = [t for k, t in tensors.items() if k.endswith(("classifier.weight", "score.weight", "out_proj.weight"))]
        num_labels = heads[0].shape[0] if heads else None
    out = merge_to_directory(o.model, o.adapter, o.out, kind=kind, num_labels=num_labels, overwrite=o.overwrite)
    print(f"merged {o.adapter} into {o.model}: wrote {out} (loads with transformers, no lorakit needed)")
    return 0
