"""lorakit quickstart: the main job of `make demo`."""

from __future__ import annotations

import argparse

from lorakit.cli.options import add_flat, options
from lorakit.quickstart.config import QuickstartConfig


def add_parser(p: argparse.ArgumentParser) -> None:
    add_flat(p, QuickstartConfig)


def run(args: argparse.Namespace) -> int:
    from lorakit.quickstart.run import run

    run(options(args, QuickstartConfig), progress=not args.no_progress)
    return 0
