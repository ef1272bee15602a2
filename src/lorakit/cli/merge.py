"""lorakit merge: fold an adapter into its base and write a plain transformers model directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the base model: built-in name or local directory")
    p.add_argument("--adapter", required=True, help="adapter directory (PEFT format)")
    p.add_argument("--out", required=True, help="output directory (written whole, atomically); must be new or empty")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out and everything in it")
    p.add_argument("--kind", choices=["causal-lm", "seq-cls", "encoder"],
                   help="model head (default: from the adapter's task_type)")
    p.add_argument("--num-labels", type=int, help="classes of a seq-cls adapter (default: read from its head)")


def run(args: argparse.Namespace) -> int:
    from lorakit.core.io import is_dora, read_adapter
    from lorakit.merged import check_output_directory, merge_to_directory

    check_output_directory(Path(args.out), args.overwrite)
    config, _, tensors = read_adapter(args.adapter, dora=is_dora(args.adapter))
    kind, num_labels = args.kind, args.num_labels
    if kind is None and config.get("task_type") == "SEQ_CLS":
        kind = "seq-cls"
    if kind == "seq-cls" and num_labels is None:
        heads = [t for k, t in tensors.items() if k.endswith(("classifier.weight", "score.weight", "out_proj.weight"))]
        num_labels = heads[0].shape[0] if heads else None
    out = merge_to_directory(args.model, args.adapter, args.out, kind=kind, num_labels=num_labels,
                             overwrite=args.overwrite)
    print(f"merged {args.adapter} into {args.model}: wrote {out} (loads with transformers, no lorakit needed)")
    return 0
