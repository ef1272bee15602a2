"""lorakit info: what a model offers to adapt, and what a LoRA config would train (no training)."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Literal

from lorakit.cli.options import add_flat, options
from lorakit.core.schema import Schema


class InfoOptions(Schema):
    """Which model to show, and the LoRA config to try on it."""

    model: str | None = None
    """Built-in name or local transformers directory; omit to list the built-in models."""
    kind: Literal["causal-lm", "seq-cls", "encoder"] | None = None
    """Model head (default: the model's)."""
    num_labels: int | None = None
    """Classes, with --kind seq-cls."""
    targets: str | None = None
    """Modules to adapt: names or suffixes (q_proj,v_proj), all-linear, or re:PATTERN (a regular expression over
    whole module paths)."""
    rank: int = 8
    """LoRA rank r."""
    alpha: float = 16.0
    """LoRA alpha."""
    layers: list[int] | None = None
    """Block indices to adapt (default: all)."""
    modules_to_save: list[str] = []
    """Modules trained in full (e.g. classifier)."""


def add_parser(p: argparse.ArgumentParser) -> None:
    add_flat(p, InfoOptions)


def run(args: argparse.Namespace) -> int:
    o = options(args, InfoOptions)
    if not o.model:
        from lorakit.models.registry import BUILTINS

        print("built-in models (or pass any local transformers directory):")
        for b in BUILTINS:
            print(f"  {b.name:<14} {b.description}")
        return 0
    import lorakit
    from lorakit.core.config import parse_targets
    from lorakit.core.targets import kind_of, plain_modules
    from lorakit.models import load

    model, _ = load(o.model, kind=o.kind, num_labels=o.num_labels)
    groups: dict[tuple[str, str, tuple], int] = defaultdict(int)
    for name, module in plain_modules(model):
        kind = kind_of(module)
        if name and kind:
            groups[(name.rsplit(".", 1)[-1], kind, tuple(module.weight.shape))] += 1
    print(f"{o.model}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"{'module suffix':<24} {'type':<10} {'weight shape':<14} count")
    for (suffix, kind, shape), n in sorted(groups.items()):
        print(f"{suffix:<24} {kind:<10} {'x'.join(map(str, shape)):<14} {n}")
    if o.targets:
        config = lorakit.LoraConfig(rank=o.rank, alpha=o.alpha, targets=parse_targets(o.targets),
                                    layers=None if o.layers is None else tuple(o.layers),
                                    modules_to_save=tuple(o.modules_to_save))
        lorakit.inject(model, config)
        print()
        print(lorakit.adapter_report(model, "default"))
    return 0
