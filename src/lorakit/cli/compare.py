"""lorakit compare: train several methods under one budget; report quality, convergence, cost and latency.

The model, data, lora, method_options and train sections are `lorakit train`'s, set the same way
(`--data.task e2e --data.train DIR --train.steps 500`), or from a YAML file whose top level adds the comparison's
own keys (methods, ranks, seeds, lr, ...).
"""

from __future__ import annotations

import argparse

from lorakit.cli.options import add_sections, given
from lorakit.compare.config import DEFAULTS, CompareConfig


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML file of the comparison (optional; options below override it)")
    add_sections(p, CompareConfig, DEFAULTS)
    p.add_argument("--no-latency", action="store_true", help="skip the latency grid")
    p.add_argument("--quiet", dest="no_progress", action="store_true", help="same as --no-progress")


def run(args: argparse.Namespace) -> int:
    from lorakit.compare import compare
    from lorakit.core.schema import apply_overrides, read_yaml, validate

    raw = read_yaml(args.config) if args.config else {}
    config = validate(CompareConfig, apply_overrides(raw, given(args, CompareConfig)), "comparison")
    results = compare(config, progress=not args.no_progress, latency=not args.no_latency)
    print(f"compared {len(results['summary'])} methods x {config.seeds} seeds: wrote {config.out}/report.html")
    return 0
