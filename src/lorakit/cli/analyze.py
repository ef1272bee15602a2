"""lorakit analyze: the LoRA paper's section 7 (subspace similarity, amplification, spectra) on saved adapters."""

from __future__ import annotations

import argparse


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapters", nargs="+", help="adapter directories (lorakit or PEFT LoRA); the first is compared "
                   "with each of the others (e.g. rank 8 vs rank 64, or two seeds)")
    p.add_argument("--model", required=True, help="the base model they were trained on: built-in name or directory")
    p.add_argument("--out", required=True, help="directory for analysis.json, report.md, report.html and PNGs")
    p.add_argument("--kind", default="causal-lm", choices=["causal-lm", "seq-cls"], help="the model head")
    p.add_argument("--num-labels", type=int, help="classes of a seq-cls model")
    p.add_argument("--layers-shown", type=int, default=4, help="layers per φ heatmap figure (evenly spaced)")


def run(args: argparse.Namespace) -> int:
    from lorakit.analysis.report import analyze

    results = analyze(args.model, args.adapters, args.out, kind=args.kind, num_labels=args.num_labels,
                      layers_shown=args.layers_shown)
    count = sum(len(rows) for rows in results["matrices"].values())
    print(f"analyzed {count} matrices of {len(args.adapters)} adapters: wrote {args.out}/report.html")
    return 0
