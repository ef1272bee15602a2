"""`lorakit eval`: score a trained model on a task's split; writes metrics.json, predictions and prints a table.

`lorakit eval --run runs/e2e-smollm2-lora --split test` reads model, task and data from the run's config.yaml and
uses its best weights (else final). Without --run, give --model (and --adapter), --task and --data.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.core.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.evaluate.decode import DecodeConfig


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Options that pick the weights: a run directory, or a model plus an optional adapter."""
    p.add_argument("--run", help="a lorakit train run_dir: model, task and data come from its config.yaml")
    p.add_argument("--model", help="built-in model name or transformers directory (a full fine-tune's model/)")
    p.add_argument("--adapter", help="adapter directory to load on --model: LoRA (PEFT format) or any lorakit "
                                     "method's (a run's final/adapter, holding lorakit_method.json)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="weights' dtype for scoring (default fp32; bf16 is ~1.7x faster where the hardware has "
                        "native bf16, auto picks it there)")


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    """The decoding options; defaults are the LoRA paper's E2E settings."""
    from lorakit.evaluate.decode import DecodeConfig

    d = DecodeConfig()
    p.add_argument("--beams", type=int, default=d.beams, help=f"beam width (default {d.beams})")
    p.add_argument("--length-penalty", type=float, default=d.length_penalty,
                   help=f"beam length penalty (default {d.length_penalty})")
    p.add_argument("--no-repeat-ngram", type=int, default=d.no_repeat_ngram_size,
                   help=f"forbid repeating n-grams of this size (default {d.no_repeat_ngram_size}; 0 disables)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help=f"most tokens generated per input (default {d.max_new_tokens})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"inputs per batch (default {d.batch_size})")


def add_parser(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--task", choices=("e2e", "glue", "instruct", "jsonl"), help="task (default: the run's)")
    p.add_argument("--glue-task", choices=("sst2", "mrpc", "rte", "cola"), help="for --task glue")
    p.add_argument("--data", help="data file, or directory holding the split (default: the run's train data dir)")
    p.add_argument("--split", default="dev", choices=("train", "dev", "test"), help="split to score (default dev)")
    p.add_argument("--limit", type=int, help="score only the first N records")
    p.add_argument("--out", help="directory for metrics.json and predictions.txt (default: RUN/eval-SPLIT, or "
                                 "./eval-TASK-SPLIT)")
    p.add_argument("--predictions-out", help="also write the generated texts, one per input line, to this file")
    p.add_argument("--predictions-in", help="score this file of texts (one line per distinct input, in data order, "
                                            "as predictions.txt) instead of generating; e.g. to add METEOR later")
    add_decode_arguments(p)


@dataclass(frozen=True)
class Target:
    """What to evaluate, resolved from --run and the explicit options (which win)."""

    model: str
    adapter: str | None
    task: str
    glue_task: str | None
    data: str | None
    max_length: int


def resolve(args: argparse.Namespace) -> Target:
    """Model, adapter, task and data from --run's config and weights, overridden by explicit options."""
    model, adapter, task, glue_task, data, max_length = None, None, None, None, None, 512
    if args.run:
        from lorakit.train.run import read_run_config

        config = read_run_config(args.run)
        weights = next((Path(args.run) / d for d in ("best", "final") if (Path(args.run) / d).is_dir()), None)
        if weights is None:
            raise ConfigError(f"{args.run} has no best/ or final/ weights yet; finish (or --resume) the run first")
        if (weights / "adapter").is_dir():
            model, adapter = config.model.name, str(weights / "adapter")
        else:
            model = str(weights / "model")
        task, glue_task, max_length = config.data.task, config.data.glue_task, config.data.max_length
        data = config.data.dev if getattr(args, "split", "dev") == "dev" and config.data.dev else config.data.train
    model = args.model or model
    if args.adapter:
        adapter = args.adapter
    task = getattr(args, "task", None) or task
    if model is None:
        raise ConfigError("say which model to use: --run RUN_DIR, or --model NAME_OR_DIR (plus --adapter DIR)")
    return Target(model, adapter, task or "e2e", getattr(args, "glue_task", None) or glue_task,
                  getattr(args, "data", None) or data, max_length)


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    """The DecodeConfig the decoding options describe."""
    from lorakit.evaluate.decode import DecodeConfig

    return DecodeConfig(beams=args.beams, length_penalty=args.length_penalty,
                        no_repeat_ngram_size=args.no_repeat_ngram, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    from lorakit.data import glue_task, read_e2e, read_glue, read_instruct, read_jsonl, tokenize_labeled
    from lorakit.evaluate.run import (
        classify,
        evaluate_generation,
        format_table,
        glue_scores,
        load_trained,
        score_predictions,
        write_lines,
        write_metrics,
    )

    target = resolve(args)
    if target.data is None:
        raise ConfigError("say which data to score: --data FILE_OR_DIR (or --run RUN_DIR)")
    out = Path(args.out or (Path(args.run) / f"eval-{args.split}" if args.run else f"eval-{target.task}-{args.split}"))
    split = args.split if Path(target.data).is_dir() else None
    if target.task == "glue":
        spec = glue_task(target.glue_task or "")
        records = read_glue(target.glue_task or "", target.data, split)[: args.limit]
        model, tokenizer = load_trained(target.model, target.adapter, "seq-cls", spec.num_labels, args.device,
                                       args.precision)
        examples = tokenize_labeled(records, tokenizer, target.max_length)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        predictions = classify(model, examples, pad)
        metrics: dict = glue_scores(predictions, [r.label for r in records], target.glue_task or "")
        write_lines(out / "predictions.txt", [spec.label_names[p] for p in predictions])
    else:
        reader = {"e2e": lambda: read_e2e(target.data, split), "instruct": lambda: read_instruct(target.data),
                  "jsonl": lambda: read_jsonl(target.data)}[target.task]
        records = reader()[: args.limit]
        if args.predictions_in:
            result = score_predictions(records, Path(args.predictions_in).read_text(encoding="utf-8").splitlines())
        else:
            model, tokenizer = load_trained(target.model, target.adapter, "causal-lm", None, args.device,
                                           args.precision)
            result = evaluate_generation(model, tokenizer, records, decode_config(args),
                                         chat=target.task == "instruct")
        write_lines(out / "predictions.txt", result.predictions)
        if args.predictions_out:
            write_lines(args.predictions_out, result.predictions)
        if result.metrics is None:
            print(f"no references found in {target.data} ({args.split}): wrote {len(result.predictions)} "
                  f"predictions, one per input in input order, to {args.predictions_out or out / 'predictions.txt'}",
                  file=sys.stderr)
            return 0
        metrics = result.metrics
    write_metrics(out / "metrics.json", {"task": target.task, "split": args.split, "model": target.model,
                                         "adapter": target.adapter, "count": len(records), "metrics": metrics})
    print(format_table(metrics))
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.txt'}", file=sys.stderr)
    return 0
