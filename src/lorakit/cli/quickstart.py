"""lorakit quickstart: the main job of `make demo`."""

from __future__ import annotations

import argparse
import dataclasses


def add_parser(p: argparse.ArgumentParser) -> None:
    from lorakit.quickstart.run import QuickstartConfig

    defaults = QuickstartConfig()
    for f in dataclasses.fields(QuickstartConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), help=f"(default: {getattr(defaults, f.name)})")


def run(args: argparse.Namespace) -> int:
    from lorakit.quickstart.run import QuickstartConfig, run

    fields = {f.name for f in dataclasses.fields(QuickstartConfig)}
    run(QuickstartConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0
