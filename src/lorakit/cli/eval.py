"""`lorakit eval`: score a trained model on a task's split; writes metrics.json and predictions, prints a table.

`lorakit eval --run runs/e2e-smollm2-lora --split test` reads model, task and data from the run's config.yaml and
uses its best weights (else final). Without --run, give --model (and --adapter), --task and --data. A split
without labels or references (E2E's testset.csv, GLUE's test.tsv) gets its predictions written, GLUE's in the
submission format, and a metrics.json that says nothing was scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal

from lorakit.cli.options import add_flat, options
from lorakit.core.schema import Schema
from lorakit.evaluate.config import DecodeConfig


class Weights(Schema):
    """Which trained weights to use."""

    run: str | None = None
    """A lorakit train run_dir: model, task and data come from its config.yaml, weights from its best/ (else
    final/)."""
    model: str | None = None
    """Built-in model name or transformers directory (a full fine-tune's model/)."""
    adapter: str | None = None
    """Adapter directory to load on the model: LoRA (PEFT format) or any lorakit method's (a run's final/adapter,
    holding lorakit_method.json)."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda or cuda:N."""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """Weights' dtype for scoring: bf16 is ~1.7x faster where the hardware has native bf16 (beam search then ranks
    slightly different scores); auto picks it there."""


class EvalOptions(Weights):
    """What to score and where the results go."""

    task: str | None = None
    """e2e, glue, instruct or jsonl (default: the run's)."""
    glue_task: str | None = None
    """For task glue: sst2, mrpc, rte or cola (default: the run's)."""
    data: str | None = None
    """The split's file, or a directory holding it (default: the run's data)."""
    split: Literal["train", "dev", "test"] = "dev"
    """The split to score; test writes predictions (and GLUE's submission file) since its labels are hidden."""
    limit: int | None = None
    """Score only the first N records."""
    out: str | None = None
    """Directory for metrics.json and the predictions (default: RUN/eval-SPLIT, or ./eval-TASK-SPLIT)."""
    predictions_out: str | None = None
    """Also write the generated texts, one per distinct input, to this file."""
    predictions_in: str | None = None
    """Score this file of texts (one line per distinct input, in data order, as predictions.txt) instead of
    generating; e.g. to add METEOR later."""


def add_parser(p: argparse.ArgumentParser) -> None:
    add_flat(p, EvalOptions)
    add_flat(p, DecodeConfig, skip=("max_prompt_length",))


def run(args: argparse.Namespace) -> int:
    from lorakit.core.atomic import atomic_write
    from lorakit.trained import evaluate, format_table, resolve

    o = options(args, EvalOptions)
    decode = options(args, DecodeConfig)
    split_path = {o.split: o.data} if o.data else {}
    target = resolve(o.run, o.model, o.adapter, {"task": o.task, "glue_task": o.glue_task, **split_path})
    out = Path(o.out or (Path(o.run) / f"eval-{o.split}" if o.run else f"eval-{target.data.task}-{o.split}"))
    result = evaluate(target, o.split, out, decode, o.limit, o.device, o.precision, o.predictions_in,
                      progress=not args.no_progress)
    if o.predictions_out:
        atomic_write(Path(o.predictions_out), (out / "predictions.txt").read_bytes())
    if result["metrics"] is None:
        print(f"{result['note']}: {', '.join(result['files'])}", file=sys.stderr)
        return 0
    print(format_table(result["metrics"]))
    print(f"wrote {', '.join(result['files'])}", file=sys.stderr)
    return 0
