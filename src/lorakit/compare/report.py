"""report.md / report.html of a comparison: quality (Table 3 style), convergence, cost, latency (Table 1 style)
and, for a rank sweep, Table 6."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorakit.analysis import plots
from lorakit.compare.config import GENERATION_CURVE, CompareConfig
from lorakit.compare.latency import Cell


def by_label(runs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        out[r["label"]].append(r)
    return dict(out)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label: trainable params, and mean/std over seeds of every final metric and cost."""
    out = {}
    for label, group in by_label(runs).items():
        metrics = {k: mean_std([r["metrics"][k] for r in group if k in r["metrics"]])
                   for k in group[0]["metrics"]}
        cost = {k: statistics.fmean(r["cost"][k] for r in group) for k in group[0]["cost"]
                if isinstance(group[0]["cost"][k], (int, float))}
        out[label] = {"method": group[0]["method"], "rank": group[0]["rank"], "seeds": len(group),
                      "trainable_params": group[0]["trainable_params"], "total_params": group[0]["total_params"],
                      "lr": group[0]["lr"], "metrics": metrics, "cost": cost}
    return out


def curve(group: Sequence[dict[str, Any]], split: str, key: str, x: str) -> list[tuple[float, float]]:
    """Seed-mean (x, key) points of one label's records of `split`, at steps every seed reached."""
    per_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in group:
        for rec in run["records"]:
            if rec["split"] == split and key in rec:
                per_step[rec["step"]].append(rec)
    return [(statistics.fmean(r[x] for r in recs), statistics.fmean(r[key] for r in recs))
            for step, recs in sorted(per_step.items()) if len(recs) == len(group)]


def _params(n: int) -> str:
    return f"{n / 1e6:.3f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def write_report(config: CompareConfig, runs: Sequence[dict[str, Any]], cells: Sequence[Cell],
                 out: str | Path) -> Path:
    """Write report.md, report.html and the plots into `out`."""
    from lorakit.core.config import format_targets
    from lorakit.methods import METHODS
    from lorakit.tasks import task_for

    table = summary(runs)
    data, train, lora, options = config.data, config.train, config.lora, config.method_options
    task = task_for(data)
    sized = {field for m in config.methods for field in METHODS[m].sized_by}
    targets = format_targets(lora.targets)
    page = plots.Page(f"lorakit compare: {config.model.name} on {data.task}"
                      + (f" ({data.glue_task})" if data.glue_task else ""))
    page.text(f"Budget: {train.steps} steps of batch {train.batch_size} (max length {data.max_length}), "
              f"{config.seeds} seed(s), dev evaluation every {config.evaluation_interval} steps on "
              f"{f'at most {data.dev_limit}' if data.dev_limit else 'all'} dev examples; LoRA rank {lora.rank} "
              f"(alpha {lora.alpha}) on {targets if isinstance(targets, str) else ', '.join(targets)}"
              + (f"; adapter bottleneck {options.bottleneck}" if "bottleneck" in sized else "")
              + (f"; prefix length {options.prefix_length}" if "prefix_length" in sized else "")
              + ". Learning rates: "
              + ", ".join(f"{k} {v['lr']:g}" for k, v in table.items()) + ".")
    metric_names = sorted({k for v in table.values() for k in v["metrics"]}, key=lambda k: (k != "dev_loss", k))
    page.heading("Quality (Table 3 style; mean ± std over seeds)")
    page.table(["method", "trainable params", *metric_names],
               [[label, _params(v["trainable_params"]),
                 *[_fmt(v["metrics"].get(k)) for k in metric_names]] for label, v in table.items()])
    groups = by_label(runs)
    page.heading("Convergence")
    generation = task.kind == "causal-lm"
    main = GENERATION_CURVE if generation else task.best_metric
    for key, split, title in (("dev_loss", "dev", "dev loss"), (main, "dev", None),
                              ("loss", "train", "training loss")):
        per_step = {label: curve(g, split, key, "step") for label, g in groups.items()}
        if not any(len(p) > 1 for p in per_step.values()):
            continue
        title = title or f"dev {key}"
        per_second = {label: curve(g, split, key, "train_seconds") for label, g in groups.items()}
        page.image(f"{key}_steps.png", plots.lines(per_step, "step", title, f"{title} per step"),
                   f"{title} against optimizer steps")
        page.image(f"{key}_seconds.png", plots.lines(per_second, "training seconds (evaluation excluded)", title,
                                                     f"{title} per second of compute"),
                   f"{title} against wall-clock training seconds")
    if generation:
        page.text("The quality table's generation metrics come from beam search (beam "
                  f"{config.beams}) over {config.generate_limit} dev inputs after training; the BLEU curves, where "
                  f"present, decode the first {config.curve_inputs} dev inputs greedily at every evaluation "
                  f"({GENERATION_CURVE}).")
    page.heading("Cost")
    page.table(["method", "step time (ms)", "tokens/s", "peak memory (MB)", "checkpoint (MB)", "train seconds"],
               [[label, f"{1000 * v['cost']['step_seconds']:.1f}", f"{v['cost']['tokens_per_s']:,.0f}",
                 f"{v['cost']['peak_memory_mb']:,.1f}", f"{v['cost']['checkpoint_mb']:,.2f}",
                 f"{v['cost']['train_seconds']:,.1f}"] for label, v in table.items()])
    kind = runs[0]["cost"]["peak_memory_kind"] if runs else ""
    page.text(f"Peak memory: {kind}" + (" (weights + gradients + AdamW moments; activations excluded)"
                                        if kind == "estimate" else "") + ".")
    page.image("step_time.png", plots.bars({k: 1000 * v["cost"]["step_seconds"] for k, v in table.items()},
                                           "ms per step", "Median training step time"), "Median step time per method")
    if cells:
        variants = [n for n in cells[0].seconds if n != "base"]
        page.heading("Inference latency (Table 1 style)")
        page.text("Median forward time in ms, and the added latency over the base model. Merged LoRA runs the "
                  "base architecture with updated weights, so it adds nothing; adapters add sequential layers and "
                  "prefixes add positions.")
        page.table(["batch", "length", "base", *variants],
                   [[c.batch, c.length, f"{1000 * c.seconds['base']:.2f}",
                     *[f"{1000 * c.seconds[n]:.2f} ({c.overhead(n):+.1f}%)" for n in variants]] for c in cells])
    ranked = {label: v for label, v in table.items() if v["rank"] is not None and config.ranks}
    if ranked:
        page.heading("Rank sweep (Table 6 style)")
        page.table(["method", "rank r", "trainable params", *metric_names],
                   [[v["method"], v["rank"], _params(v["trainable_params"]),
                     *[_fmt(v["metrics"].get(k)) for k in metric_names]] for v in ranked.values()])
    return page.write(out)


def _fmt(value: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    mean, std = value
    return f"{mean:.4f} ± {std:.4f}" if std else f"{mean:.4f}"
