"""The `lorakit` command: each subcommand lives in its own module here with `add_parser` and `run`.

Commands stay thin: parse arguments, call library functions, print. A LoraError becomes a one-line message and
exit code 2 instead of a traceback, since it already says what to do. Only the command being run has its module
imported, so `lorakit --help` loads neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lorakit.core.errors import Interrupted, LoraError

COMMANDS = {
    "quickstart": "Fine-tune SmolLM2-135M with LoRA on the bundled restaurant set and show before/after.",
    "info": "Show a model's adaptable modules and what a LoRA config would train.",
    "merge": "Merge an adapter into its base model and write a plain transformers directory.",
    "train": "Train from a YAML config with command-line overrides (resumable; torchrun for several processes).",
    "eval": "Decode and score a trained adapter or model on a task's train, dev or test split.",
    "generate": "Generate texts for prompts with a base model and optional adapter.",
    "serve": "Serve a base model and many LoRA adapters over an OpenAI-compatible HTTP API.",
    "compare": "Train several fine-tuning methods under one budget and write a comparison report.",
    "analyze": "The paper's section 7 on trained adapters: subspace similarity, amplification, spectra.",
}
"""Subcommand name -> its one-line help; the module is lorakit.cli.<name>."""


class Parser(argparse.ArgumentParser):
    """argparse without abbreviated option names (`--train.step` must not mean `--train.steps`), and with
    negative numbers as values: Python 3.11's argparse takes `-1e-4` for an option because its number pattern
    has no exponent; this is the rule Python 3.13 uses."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of `lorakit`, with the options of `command` only (the others list their name and help)."""
    parser = Parser(prog="lorakit", description="LoRA for transformers models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"lorakit.cli.{name}")
            module.add_parser(p)
            p.add_argument("--no-progress", action="store_true",
                           help="no progress bars, and none of transformers' loading messages")
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    if args.command in TRAINING_COMMANDS and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP
    try:
        with quiet(args.no_progress):
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


TRAINING_COMMANDS = ("train", "compare", "quickstart")
"""Commands whose OpenMP threads sleep at barriers instead of spinning (OMP_WAIT_POLICY=PASSIVE, unless set): beside
another busy process, spinning threads wait for a descheduled peer and a training step loses most of its speed;
sleeping ones lose less, and nothing when the CPU is quiet (BENCHMARKS.md). `lorakit serve` leaves a core free
instead (cli/serve.py)."""

QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
"""What --no-progress sets before a command imports tqdm and transformers, which read these at import."""


@contextmanager
def quiet(on: bool) -> Iterator[None]:
    """With `on`, no progress bar (tqdm's, transformers' loading and GGUF bars) and no transformers info or
    warnings (its load report) while the command runs."""
    if not on:
        yield
        return
    before = {k: os.environ.get(k) for k in QUIET_ENV}
    os.environ.update(QUIET_ENV)
    transformers = sys.modules.get("transformers")
    if transformers is not None:  # imported already (lorakit used as a library in this process)
        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if transformers is not None:
            transformers.logging.set_verbosity(level)
            transformers.logging.enable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
