"""`lorakit compare`: train several methods under one budget and report quality, convergence, cost and latency.

`compare(config)` runs everything (skipping finished runs, resuming unfinished ones) and writes results.json,
report.md and report.html to config.out.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lorakit.compare.config import CompareConfig

__all__ = ["CompareConfig", "compare"]


def compare(config: CompareConfig, progress: bool = True, latency: bool = True) -> dict[str, Any]:
    """Train every variant x seed, measure latency side by side, write results.json and the reports."""
    from lorakit.compare.latency import lora_variants, measure
    from lorakit.compare.report import summary, write_report
    from lorakit.compare.runner import prepare, run_all, run_config
    from lorakit.core.atomic import atomic_write
    from lorakit.methods import METHODS
    from lorakit.models import resolve_device

    prepared, base, tokenizer = prepare(config)
    runs = run_all(config, prepared, base, tokenizer, progress)
    cells = []
    if latency:
        rc = run_config(config, "lora", config.lora.rank, 0, Path("."))
        variants = lora_variants(rc.lora)
        # Methods that change weights only (full FT, FT-top2, BitFit) run exactly like the base model.
        for name in config.methods:
            spec = METHODS[name]
            if spec.family != "lora" and not spec.weights_only:
                variants[name] = _applied(spec.prepare, rc)
        device = config.train.device
        cells = measure(base, variants, config.latency_batches, config.latency_lengths, config.latency_repeats,
                        resolve_device(None if device == "auto" else device))
    results = {
        "config": config.to_dict(),
        "runs": runs,
        "summary": summary(runs),
        "latency": [dataclasses.asdict(c) for c in cells],
    }
    out = Path(config.out)
    atomic_write(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    write_report(config, runs, cells, out)
    return results


def _applied(prepare: Any, rc: Any) -> Any:
    def make(model: Any) -> Any:
        prepare(model, rc.lora, rc.method_options)
        return model

    return make
