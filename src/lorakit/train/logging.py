"""Where training metrics go: a tqdm progress bar, run_dir/metrics.jsonl, TensorBoard events, and loss.png at the end.

Only rank 0 makes a RunLog that writes; the others get one with no directory and no bar.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"


class RunLog:
    """Progress bar plus metric sinks. `run_dir=None` keeps records in memory only (they are always kept)."""

    def __init__(self, run_dir: Path | None, total_steps: int, start_step: int, progress: bool) -> None:
        self.run_dir = run_dir
        self.records: list[dict[str, Any]] = []
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                        disable=not progress, file=sys.stderr)
        self.board = None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.records = _read_records(run_dir / METRICS_FILE, start_step)
            # Rewrite without the lines past the checkpoint a resumed run starts from: they are recomputed.
            (run_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in self.records))
            self.board = _tensorboard(run_dir / "tensorboard", start_step)

    def write(self, record: dict[str, Any]) -> None:
        """Keep one record ({"step", "split", ...numbers}) and send it to every sink."""
        self.records.append(record)
        if self.run_dir is not None:
            with open(self.run_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.board is not None:
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.board.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def advance(self, steps: int, loss: float, tokens_per_s: float) -> None:
        """Move the bar; tqdm derives the ETA from the step rate."""
        self.bar.update(steps)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)

    def message(self, text: str) -> None:
        """A line above the progress bar (e.g. dev results)."""
        if not self.bar.disable:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        """Close the bar and event file, and draw loss.png from every record of the run."""
        self.bar.close()
        if self.board is not None:
            self.board.close()
        if self.run_dir is not None and self.records:
            plot_losses(self.records, self.run_dir / "loss.png")


def plot_losses(records: list[dict[str, Any]], path: Path) -> None:
    """Train loss and dev loss against step, as a PNG (matplotlib's Agg backend; skipped if not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed, so loss.png was not drawn; pip install matplotlib",
                      stacklevel=2)
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, key in (("train", "loss"), ("dev", "dev_loss")):
        points = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
        if points:
            ax.plot(*zip(*points, strict=True), label=f"{split} loss", marker="o" if split == "dev" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _read_records(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] <= up_to_step]


def _tensorboard(directory: Path, start_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed, so no event files are written; pip install tensorboard",
                      stacklevel=3)
        return None
    # purge_step drops events a killed run logged after the checkpoint this run resumes from.
    return SummaryWriter(str(directory), purge_step=start_step + 1 if start_step else None)
