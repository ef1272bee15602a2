"""lorakit analyze: the LoRA paper's section 7 (subspace similarity, amplification, spectra) on saved adapters."""

from __future__ import annotations

import argparse
from typing import Literal

from lorakit.cli.options import add_flat, options
from lorakit.core.schema import Schema


class AnalyzeOptions(Schema):
    """The base model the adapters were trained on, and where the analysis goes."""

    model: str
    """The base model they were trained on: built-in name or directory."""
    out: str
    """Directory for analysis.json, report.md, report.html and PNGs."""
    kind: Literal["causal-lm", "seq-cls"] = "causal-lm"
    """The model head."""
    num_labels: int | None = None
    """Classes of a seq-cls model."""
    layers_shown: int = 4
    """Layers per φ heatmap figure (evenly spaced)."""


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapters", nargs="+", help="adapter directories (lorakit or PEFT LoRA); the first is compared "
                   "with each of the others (e.g. rank 8 vs rank 64, or two seeds)")
    add_flat(p, AnalyzeOptions)


def run(args: argparse.Namespace) -> int:
    from lorakit.analysis.report import analyze

    o = options(args, AnalyzeOptions)
    results = analyze(o.model, args.adapters, o.out, kind=o.kind, num_labels=o.num_labels,
                      layers_shown=o.layers_shown)
    count = sum(len(rows) for rows in results["matrices"].values())
    print(f"analyzed {count} matrices of {len(args.adapters)} adapters: wrote {o.out}/report.html")
    return 0
