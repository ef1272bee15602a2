"""Training every method x seed of a comparison, each in its own run directory, so a crash costs one run.

runs/<label>/seed<k>/result.json marks a finished run (skipped on a rerun); a run directory with checkpoints but no
result resumes from its newest one. Wall-clock training time is kept in timeline.jsonl per record, so time axes
survive a resume and leave out evaluation time.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit.compare.config import GENERATION_CURVE, CompareConfig
from lorakit.core.atomic import atomic_write
from lorakit.core.errors import ConfigError, Interrupted
from lorakit.methods import METHODS, MethodOptions, trainable_count
from lorakit.models import resolve_device
from lorakit.tasks import Task, read_split, task_for
from lorakit.train import checkpoint
from lorakit.train.config import RunConfig

RESULT_FILE = "result.json"
TIMELINE_FILE = "timeline.jsonl"


@dataclass(frozen=True)
class Prepared:
    """The data every run shares, tokenized once."""

    task: Task
    train: list
    dev: list
    dev_records: list
    pad_id: int


def run_config(config: CompareConfig, method: str, rank: int | None, seed: int, run_dir: Path) -> RunConfig:
    """The lorakit train config of one run: the comparison's sections with this method's rank, lr and seed."""
    spec = METHODS[method]
    lora = config.lora if rank is None else dataclasses.replace(config.lora, rank=rank)
    interval = config.evaluation_interval
    train = config.train.model_copy(update={
        "lr": config.learning_rate(method), "seed": seed, "eval_every": interval, "save_every": interval,
        "keep_checkpoints": 1, "best_metric": task_for(config.data).best_metric,
    })
    # Only the options the method reads, so a run's saved config never carries another method's sizes.
    options = MethodOptions(**{k: getattr(config.method_options, k) for k in spec.sized_by})
    return RunConfig(method=method, run_dir=str(run_dir), model=config.model, data=config.data, lora=lora,
                     method_options=options, train=train)


def prepare(config: CompareConfig) -> tuple[Prepared, nn.Module, Any]:
    """Read and tokenize the data and check every method applies to the model, before any training; returns the
    shared data, a base model and its tokenizer. Every problem is reported in one ConfigError."""
    from lorakit.models import load

    task = task_for(config.data)
    train_records = read_split(config.data, "train") or []
    dev_records = read_split(config.data, "dev") or []
    model, tokenizer = load(config.model.name, kind=task.kind, num_labels=task.num_labels)
    problems = []
    if len(train_records) < config.train.batch_size:
        problems.append(f"only {len(train_records)} training examples for a batch of {config.train.batch_size}; "
                        "lower train.batch_size or add data")
    if not dev_records:
        problems.append(f"no dev split found for {config.data.train}; a comparison needs dev data to evaluate")
    for label, method, rank in config.variants():
        rc = run_config(config, method, rank, 0, Path("."))
        try:
            METHODS[method].prepare(copy.deepcopy(model), rc.lora, rc.method_options)
        except ConfigError as e:
            problems.append(f"{label} cannot apply to {config.model.name}: {e}")
    if problems:
        raise ConfigError("cannot run this comparison:\n  - " + "\n  - ".join(problems))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    max_length = config.data.max_length
    prepared = Prepared(task, task.tokenize(train_records, tokenizer, max_length),
                        task.tokenize(dev_records, tokenizer, max_length), dev_records, pad_id)
    return prepared, model, tokenizer


def run_all(config: CompareConfig, prepared: Prepared, base: nn.Module, tokenizer: Any,
            progress: bool = True) -> list[dict[str, Any]]:
    """Train (or skip, or resume) every variant x seed on `prepare`'s data; returns their results in order."""
    results = []
    for label, method, rank in config.variants():
        for seed in range(config.seeds):
            run_dir = Path(config.out) / "runs" / label / f"seed{seed}"
            done = run_dir / RESULT_FILE
            if done.is_file():
                results.append(json.loads(done.read_text()))
                continue
            if progress:
                print(f"compare: {label} seed {seed} -> {run_dir}", flush=True)
            results.append(run_one(config, prepared, base, tokenizer, label, method, rank, seed, run_dir, progress))
    return results


def run_one(config: CompareConfig, prepared: Prepared, base: nn.Module, tokenizer: Any, label: str, method: str,
            rank: int | None, seed: int, run_dir: Path, progress: bool) -> dict[str, Any]:
    """Train one variant with one seed (resuming its checkpoint if any), evaluate it, write result.json."""
    from lorakit.train.loop import fit

    rc = run_config(config, method, rank, seed, run_dir)
    torch.manual_seed(seed)  # seeds adapter/prefix initialization; a resume overwrites it from the checkpoint
    model = copy.deepcopy(base)
    export = METHODS[method].prepare(model, rc.lora, rc.method_options)
    trainable, total = trainable_count(model), sum(p.numel() for p in model.parameters())
    resume = bool(checkpoint.checkpoints(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    timeline = Timeline(run_dir / TIMELINE_FILE, resume)
    device = resolve_device(rc.train.device)  # where fit trains; its peak is read there, not on another device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    evaluate = prepared.task.dev_metrics(prepared.dev, prepared.pad_id) or _bleu_curve_hook(
        config, tokenizer, prepared.dev_records)
    result = fit(model, prepared.train, rc.train, prepared.dev, run_dir, pad_id=prepared.pad_id, export=export,
                 evaluate=evaluate, resume=resume, progress=progress, on_log=timeline.record)
    if result.stopped == "interrupted":
        raise Interrupted(f"interrupted during {run_dir} at step {result.steps}; its checkpoint is saved, and the "
                          "same command continues it", result.signal or signal.SIGINT)
    final = dict(next(r for r in reversed(result.records) if r["split"] == "dev"))
    final.pop("step")
    final.pop("split")
    if prepared.task.kind == "causal-lm":
        final.update(_generation_metrics(config, prepared.task, model, tokenizer, prepared.dev_records))
    records = timeline.merged()
    steps = [r for r in records if r["split"] == "train"]
    out = {
        "label": label, "method": method, "rank": rank, "seed": seed, "trainable_params": trainable,
        "total_params": total, "lr": rc.train.lr, "metrics": final, "records": records,
        "cost": {
            "step_seconds": statistics.median(r["step_seconds"] for r in steps),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps),
            "train_seconds": steps[-1]["train_seconds"],
            "peak_memory_mb": _peak_memory_mb(model, trainable, device),
            "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "estimate",
            "checkpoint_mb": _size_mb(run_dir / "final" / export.name),
        },
    }
    atomic_write(run_dir / RESULT_FILE, (json.dumps(out, indent=1) + "\n").encode())
    return out


class Timeline:
    """Training seconds per metrics record, excluding dev evaluations, continued across resumes."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        if not resume:
            path.write_text("")
        self.entries = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
        self.base: float | None = None
        self.mark = time.perf_counter()

    def record(self, entry: dict[str, Any]) -> None:
        now = time.perf_counter()
        if self.base is None:  # first record since this (re)start: continue from the last one before its step
            earlier = [e["train_seconds"] for e in self.entries if e["step"] < entry["step"]]
            self.base = max(earlier, default=0.0)
        row = {k: v for k, v in entry.items() if isinstance(v, (int, float, str))}
        if entry["split"] == "train":
            row["step_seconds"] = now - self.mark
            self.base += now - self.mark
        row["train_seconds"] = self.base
        self.mark = now  # evaluation time until the next step's record is not training time
        self.entries.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def merged(self) -> list[dict[str, Any]]:
        """One entry per (step, split): the newest, since a resume recomputes the steps after its checkpoint."""
        latest = {(e["step"], e["split"]): e for e in self.entries}
        return sorted(latest.values(), key=lambda e: (e["step"], e["split"] != "train"))


def _bleu_curve_hook(config: CompareConfig, tokenizer: Any, dev_records: list) -> Any:
    """Generation tasks: at each dev evaluation, greedy BLEU (×100) over the first config.curve_inputs distinct dev
    inputs, the main metric's convergence curve (the quality table's BLEU is the beam search after training); None
    if off."""
    if not config.curve_inputs:
        return None
    from lorakit.evaluate.config import DecodeConfig
    from lorakit.evaluate.decode import generate, prompt_ids
    from lorakit.evaluate.mteval import bleu
    from lorakit.evaluate.score import distinct_inputs

    max_length = config.data.max_length
    prompts, references = distinct_inputs(dev_records)
    ids = prompt_ids(prompts[: config.curve_inputs], tokenizer, max_length)
    references = references[: config.curve_inputs]
    decode = DecodeConfig(beams=1, max_new_tokens=64, batch_size=16, max_prompt_length=max_length)

    def hook(model: nn.Module) -> dict[str, float]:
        texts = generate(model, tokenizer, ids, decode, progress=False)
        return {GENERATION_CURVE: 100.0 * bleu(texts, references)}

    return hook


def _generation_metrics(config: CompareConfig, task: Task, model: nn.Module, tokenizer: Any,
                        dev_records: list) -> dict:
    from lorakit.data import group_references
    from lorakit.evaluate.config import DecodeConfig

    groups = {g for g, _ in group_references(dev_records)[: config.generate_limit]}
    pairs = [p for p in dev_records if p.group in groups]
    max_length = config.data.max_length
    decode = DecodeConfig(beams=config.beams, max_new_tokens=64, max_prompt_length=max_length)
    texts = task.predict(model.eval(), tokenizer, pairs, decode, max_length, progress=False)
    metrics = task.score(pairs, texts) or {}
    return {k: v for k, v in metrics.items() if v is not None}


def _peak_memory_mb(model: nn.Module, trainable: int, device: torch.device) -> float:
    """CUDA's peak allocation on the training device, or on CPU the weights plus gradients and AdamW's two moments
    of what trains (activations excluded: the CPU allocator keeps no peak counter)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return (weights + 3 * 4 * trainable) / 2**20


def _size_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**20 if directory.exists() else 0.0
