"""`lorakit train CONFIG.yaml [--section.key VALUE ...] [--resume]`: fine-tune with LoRA (or --method full).

Every config field is also an option named `--section.field`, with the field's docstring as its help, so
`lorakit train --help` documents the whole config. Run under `torchrun --nproc_per_node N -m lorakit train ...`
for data parallelism.
"""

from __future__ import annotations

import argparse
import signal
import sys

from lorakit.cli.options import add_sections, given
from lorakit.train.config import RunConfig


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config file (see configs/); omitted means all defaults")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in run_dir from its newest checkpoint (same config required)")
    add_sections(p, RunConfig, top=("method", "run_dir"))
    p.add_argument("--device", dest="train::device", default=argparse.SUPPRESS, metavar="DEVICE",
                   help="same as --train.device: auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from lorakit.train import distributed
    from lorakit.train.config import load_config
    from lorakit.train.run import train

    config = load_config(args.config, given(args, RunConfig))
    try:
        result = train(config, resume=args.resume, progress=not args.no_progress)
    finally:
        distributed.teardown()
    if result.stopped == "interrupted":
        print(f"interrupted at step {result.steps}; checkpoint written to {config.run_dir}/checkpoints. Continue "
              "with the same command plus --resume.", file=sys.stderr)
        return 128 + (result.signal or signal.SIGINT)  # 130 after SIGINT, 143 after SIGTERM, as shells report
    summary = [f"done: {result.steps} steps"]
    if result.loss is not None:
        summary.append(f"last loss {result.loss:.4f}")
    if result.best is not None:
        summary.append(f"best {config.train.best_metric} {result.best:.4f} at step {result.best_step}")
    print(", ".join(summary) + f"; weights in {config.run_dir}/final")
    return 0
