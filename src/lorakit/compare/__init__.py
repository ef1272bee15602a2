"""`lorakit compare`: train several methods under one budget and report quality, convergence, cost and latency.

`compare(config)` runs everything (skipping finished runs, resuming unfinished ones) and writes results.json,
report.md and report.html to config.out.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lorakit.compare.config import LEARNING_RATES, CompareConfig

__all__ = ["LEARNING_RATES", "CompareConfig", "compare"]


def compare(config: CompareConfig, progress: bool = True, latency: bool = True) -> dict[str, Any]:
    """Train every variant x seed, measure latency side by side, write results.json and the reports."""
    from lorakit.compare.latency import lora_variants, measure
    from lorakit.compare.report import summary, write_report
    from lorakit.compare.runner import prepare, run_all, run_config
    from lorakit.core.io import atomic_write
    from lorakit.methods import ALL, LORA_FAMILY
    from lorakit.models import resolve_device

    prepared, base, tokenizer = prepare(config)
    runs = run_all(config, prepared, base, tokenizer, progress)
    cells = []
    if latency:
        rc = run_config(config, "lora", config.rank, 0, Path("."))
        variants = lora_variants(rc.lora)
        # Full FT, FT-top2 and BitFit change weights only, so they run exactly like the base model.
        for method in config.methods:
            if method not in LORA_FAMILY and method not in ("full", "ft-top2", "bitfit"):
                variants[method] = _applied(ALL[method], rc)
        cells = measure(base, variants, config.latency_batches, config.latency_lengths, config.latency_repeats,
                        resolve_device(None if config.device == "auto" else config.device))
    results = {
        "config": _plain(dataclasses.asdict(config)),
        "runs": runs,
        "summary": summary(runs),
        "latency": [dataclasses.asdict(c) for c in cells],
    }
    out = Path(config.out)
    atomic_write(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    write_report(config, runs, cells, out)
    return results


def _applied(method: Any, rc: Any) -> Any:
    def make(model: Any) -> Any:
        method(model, rc)
        return model

    return make


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v for k, v in d.items()}
