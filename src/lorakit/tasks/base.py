"""What a task is: how its data is read and tokenized, which model head it trains, and how it is scored.

Each task implements `Task`; lorakit's training, evaluation, comparison and command line ask the task instead of
testing its name. The tasks themselves are thin: readers live in lorakit.data, metrics and decoding in
lorakit.evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lorakit.data import Example
    from lorakit.evaluate.config import DecodeConfig
    from lorakit.tasks.config import DataConfig

Split = Literal["train", "dev", "test"]
Evaluate = Callable[[nn.Module], dict[str, float]]
"""A task-metric hook: called with the (unwrapped, eval-mode) model at each dev evaluation."""


class Task(Protocol):
    """One task: data in, a model head, predictions and scores out."""

    name: str
    kind: Literal["causal-lm", "seq-cls"]
    """The model head lorakit.models.load builds for it."""
    num_labels: int | None
    """Classes of a seq-cls task; None for generation."""
    best_metric: str
    """The dev metric that picks a run's best checkpoint by default."""

    def read(self, data: DataConfig, split: Split) -> list | None:
        """The records of a split, cut to the configured limit; None when the split does not exist."""
        ...

    def tokenize(self, records: Sequence, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[Example]:
        """Token ids with loss masks."""
        ...

    def dev_metrics(self, dev_examples: Sequence[Example], pad_id: int) -> Evaluate | None:
        """Metrics cheap enough to compute at every dev evaluation during training, or None."""
        ...

    def predict(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: Sequence,
                decode: DecodeConfig, max_length: int, progress: bool = True) -> list:
        """One prediction per scored unit (a class index per example, or a text per distinct input)."""
        ...

    def score(self, records: Sequence, predictions: Sequence) -> dict[str, float | None] | None:
        """The task's metrics, or None when the records carry no labels or references."""
        ...

    def write_predictions(self, out: Path, records: Sequence, predictions: Sequence) -> list[Path]:
        """Write the predictions in the task's own formats (e.g. GLUE's submission file); returns the files."""
        ...


def split_path(data: DataConfig, split: Split, default_dirs: bool) -> str | None:
    """The file or directory a split is read from: the config's own path for it, else (where the task finds its
    splits inside one directory, `default_dirs`) the train directory; None when there is none."""
    given = {"train": data.train, "dev": data.dev, "test": data.test}[split]
    if given is not None:
        return given
    return data.train if default_dirs and Path(data.train).is_dir() else None


def cut(records: list, data: DataConfig, split: Split) -> list:
    """The first train_limit / dev_limit records of a split, or all."""
    limit = {"train": data.train_limit, "dev": data.dev_limit, "test": None}[split]
    return records[:limit] if limit else records


def write_text(path: Path, text: str) -> Path:
    """Write a predictions file atomically; returns its path."""
    from lorakit.core.atomic import atomic_write

    atomic_write(path, text.encode())
    return path


def lines_file(path: Path, lines: Sequence[Any]) -> Path:
    """One prediction per line (newlines inside a text become spaces)."""
    return write_text(path, "".join(str(line).replace("\n", " ") + "\n" for line in lines))
