"""`lorakit generate`: write completions for prompts given on the command line or in a file (one per line).

With --task e2e each input is an E2E meaning representation and is formatted as in training; with --task instruct
it is a user message under the tokenizer's chat template; jsonl uses it as written. Decoding defaults are the
paper's E2E settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorakit.cli.eval import Weights
from lorakit.cli.options import add_flat, options
from lorakit.core.errors import ConfigError
from lorakit.evaluate.config import DecodeConfig


class GenerateOptions(Weights):
    """What to generate from and where the texts go."""

    prompt: list[str] = []
    """Inputs (repeat --prompt, or give a YAML list)."""
    input: str | None = None
    """A file with one input per line."""
    task: str | None = None
    """How inputs become prompts: e2e (an MR), instruct (a user message under the chat template) or jsonl (as
    written); default: the run's task, else jsonl."""
    output: str | None = None
    """Write the texts here, one per line, instead of printing them."""
    max_length: int = 512
    """Prompt tokens kept (from the right) when no run gives its data.max_length."""


def add_parser(p: argparse.ArgumentParser) -> None:
    add_flat(p, GenerateOptions, skip=("prompt",))
    p.add_argument("--prompt", action="append", default=[], help=GenerateOptions.model_fields["prompt"].description)
    add_flat(p, DecodeConfig, skip=("max_prompt_length",))


def run(args: argparse.Namespace) -> int:
    from lorakit.core.atomic import atomic_write
    from lorakit.evaluate.decode import generate
    from lorakit.tasks import task_for
    from lorakit.tasks.generation import GenerationTask
    from lorakit.trained import load_trained, resolve

    o = options(args, GenerateOptions)
    decode = options(args, DecodeConfig)
    inputs = list(args.prompt)
    if o.input:
        inputs += [line.strip() for line in Path(o.input).read_text().splitlines() if line.strip()]
    if not inputs:
        raise ConfigError("nothing to generate from: give --prompt TEXT (repeatable) or --input FILE")
    target = resolve(o.run, o.model, o.adapter, {"task": o.task or (None if o.run else "jsonl")})
    task = task_for(target.data)
    if not isinstance(task, GenerationTask):
        raise ConfigError(f"task {target.data.task} classifies; lorakit generate writes texts (use lorakit eval)")
    max_length = target.data.max_length if o.run else o.max_length
    model, tokenizer = load_trained(target.model, target.adapter, task.kind, None, o.device, o.precision)
    ids = task.input_ids(inputs, tokenizer, max_length)
    texts = generate(model, tokenizer, ids, decode, progress=not args.no_progress and len(inputs) > decode.batch_size)
    if o.output:
        atomic_write(Path(o.output), "".join(text + "\n" for text in texts).encode())
        print(f"wrote {len(texts)} texts to {o.output}", file=sys.stderr)
    else:
        for text in texts:
            print(text)
    return 0
