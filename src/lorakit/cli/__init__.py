"""The `lorakit` command: each subcommand lives in its own module here with `add_parser` and `run`.

Commands stay thin: parse arguments, call library functions, print. A LoraError becomes a one-line message and
exit code 2 instead of a traceback, since it already says what to do.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lorakit.core.errors import Interrupted, LoraError

# Subcommand name -> module under lorakit.cli. Imported lazily so `lorakit info` never pays for fastapi, etc.
COMMANDS = {
    "quickstart": "Fine-tune SmolLM2-135M with LoRA on the bundled restaurant set and show before/after.",
    "info": "Show a model's adaptable modules and what a LoRA config would train.",
    "merge": "Merge an adapter into its base model and write a plain transformers directory.",
    "train": "Train from a YAML config with command-line overrides (resumable; torchrun for several processes).",
    "eval": "Decode and score a trained adapter or model on a task's dev/test split.",
    "generate": "Generate texts for prompts with a base model and optional adapter.",
    "serve": "Serve a base model and many LoRA adapters over an OpenAI-compatible HTTP API.",
    "compare": "Train several fine-tuning methods under one budget and write a comparison report.",
    "analyze": "The paper's section 7 on trained adapters: subspace similarity, amplification, spectra.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorakit", description="LoRA for transformers models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"lorakit.cli.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_parser(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except Interrupted as e:
        print(f"lorakit {args.command}: {e}", file=sys.stderr)
        return 128 + e.signal
    except LoraError as e:
        print(f"lorakit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lorakit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
