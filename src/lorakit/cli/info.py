"""lorakit info: what a model offers to adapt, and what a LoRA config would train (no training)."""

from __future__ import annotations

import argparse
from collections import defaultdict


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="built-in name or local transformers directory; omit to list built-in models")
    p.add_argument("--kind", choices=["causal-lm", "seq-cls", "encoder"], help="model head (default: the model's)")
    p.add_argument("--num-labels", type=int, help="classes, with --kind seq-cls")
    p.add_argument("--targets", help="comma-separated module suffixes, 'all-linear', or a regex prefixed by 're:'")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--layers", help="comma-separated block indices to adapt")
    p.add_argument("--modules-to-save", default="", help="comma-separated modules trained in full (e.g. classifier)")


def parse_targets(text: str) -> str | tuple[str, ...]:
    """'q_proj,v_proj' -> a tuple; 'all-linear' stays; 're:PATTERN' is a regular expression."""
    if text.startswith("re:"):
        return text[3:]
    return text if text == "all-linear" else tuple(t.strip() for t in text.split(",") if t.strip())


def run(args: argparse.Namespace) -> int:
    import lorakit
    from lorakit.core.targets import kind_of, plain_modules
    from lorakit.models import BUILTINS, load

    if not args.model:
        print("built-in models (or pass any local transformers directory):")
        for b in BUILTINS:
            print(f"  {b.name:<14} {b.description}")
        return 0
    model, _ = load(args.model, kind=args.kind, num_labels=args.num_labels)
    groups: dict[tuple[str, str, tuple], int] = defaultdict(int)
    for name, module in plain_modules(model):
        kind = kind_of(module)
        if name and kind:
            groups[(name.rsplit(".", 1)[-1], kind, tuple(module.weight.shape))] += 1
    print(f"{args.model}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"{'module suffix':<24} {'type':<10} {'weight shape':<14} count")
    for (suffix, kind, shape), n in sorted(groups.items()):
        print(f"{suffix:<24} {kind:<10} {'x'.join(map(str, shape)):<14} {n}")
    if args.targets:
        layers = tuple(int(i) for i in args.layers.split(",")) if args.layers else None
        saved = tuple(m for m in args.modules_to_save.split(",") if m)
        config = lorakit.LoraConfig(rank=args.rank, alpha=args.alpha, targets=parse_targets(args.targets),
                                    layers=layers, modules_to_save=saved)
        lorakit.inject(model, config)
        print()
        print(lorakit.adapter_report(model, "default"))
    return 0
