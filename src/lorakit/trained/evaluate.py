"""`lorakit eval`'s work: predict a split with trained weights, score it where it has labels, write the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakit.core.atomic import atomic_write
from lorakit.core.errors import ConfigError
from lorakit.evaluate.config import DecodeConfig
from lorakit.tasks import Split, read_split, task_for
from lorakit.trained.load import Target, load_trained


def evaluate(target: Target, split: Split, out: Path, decode: DecodeConfig | None = None, limit: int | None = None,
             device: str = "auto", precision: str = "fp32", predictions_in: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Predict `split` of the target's task (or read the texts of `predictions_in`), score them when the split
    has references or labels, and write metrics.json plus the task's prediction files into `out`; returns what
    metrics.json holds, with the written files under "files"."""
    task = task_for(target.data)
    records = read_split(target.data, split)
    if records is None:
        raise ConfigError(f"no {split} data for task {target.data.task}: give its file or directory with --data")
    records = records[:limit] if limit else records
    if predictions_in is not None:
        predictions = Path(predictions_in).read_text(encoding="utf-8").splitlines()
    else:
        model, tokenizer = load_trained(target.model, target.adapter, task.kind, task.num_labels, device, precision)
        predictions = task.predict(model, tokenizer, records, decode or DecodeConfig(), target.data.max_length,
                                   progress=progress)
    metrics = task.score(records, predictions)
    files = task.write_predictions(out, records, predictions)
    summary = {"task": target.data.task, "glue_task": target.data.glue_task, "split": split, "model": target.model,
               "adapter": target.adapter, "count": len(records), "metrics": metrics}
    if metrics is None:
        summary["note"] = (f"the {split} split has no labels or references here, so nothing was scored; "
                           f"{', '.join(f.name for f in files)} hold{'s' if len(files) == 1 else ''} the "
                           "predictions, in input order, for scoring elsewhere")
    atomic_write(out / "metrics.json", (json.dumps(summary, indent=2) + "\n").encode())
    return {**summary, "files": [str(f) for f in [*files, out / "metrics.json"]]}


def format_table(metrics: dict[str, float | None]) -> str:
    """Metrics as an aligned two-column table; None prints as 'n/a'."""
    width = max(len(k) for k in metrics)
    rows = [f"{'metric':<{width}}  value", f"{'-' * width}  -------"]
    rows += [f"{k:<{width}}  {'n/a' if v is None else f'{v:.4f}'}" for k, v in metrics.items()]
    return "\n".join(rows)
