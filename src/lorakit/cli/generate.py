"""`lorakit generate`: write completions for prompts given on the command line or in a file (one per line).

With --task e2e each input is an E2E meaning representation and is formatted as in training; with --task instruct
it is a user message under the tokenizer's chat template. Decoding defaults are the paper's E2E settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorakit.cli.eval import add_decode_arguments, add_model_arguments, decode_config, resolve
from lorakit.core.errors import ConfigError


def add_parser(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", action="append", default=[], help="an input (repeat for several)")
    p.add_argument("--input", help="a file with one input per line")
    p.add_argument("--task", choices=("e2e", "instruct", "plain"),
                   help="how inputs are formatted: e2e (MR), instruct (chat template) or plain text (default: the "
                        "run's task, else plain)")
    p.add_argument("--output", help="write the texts here, one per line, instead of printing them")
    add_decode_arguments(p)


def run(args: argparse.Namespace) -> int:
    from lorakit.data import e2e_prompt
    from lorakit.evaluate.decode import generate, prompt_ids
    from lorakit.evaluate.run import load_trained, write_lines

    inputs = list(args.prompt)
    if args.input:
        inputs += [line.strip() for line in Path(args.input).read_text().splitlines() if line.strip()]
    if not inputs:
        raise ConfigError("nothing to generate from: give --prompt TEXT (repeatable) or --input FILE")
    target = resolve(args)
    task = args.task or (target.task if args.run else "plain")
    prompts = [e2e_prompt(text) for text in inputs] if task == "e2e" else inputs
    model, tokenizer = load_trained(target.model, target.adapter, "causal-lm", None, args.device, args.precision)
    ids = prompt_ids(prompts, tokenizer, target.max_length, chat=task == "instruct")
    texts = generate(model, tokenizer, ids, decode_config(args), progress=len(inputs) > args.batch_size)
    if args.output:
        write_lines(args.output, texts)
        print(f"wrote {len(texts)} texts to {args.output}", file=sys.stderr)
    else:
        for text in texts:
            print(text)
    return 0
