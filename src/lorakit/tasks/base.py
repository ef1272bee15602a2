"""What a task is: how its data is read and tokenized, which model head it trains, and how it is scored.

Each task implements `Task`; lorakit's training, evaluation, comparison and command line ask the task instead of
testing its name. The tasks themselves are thin: readers live in lorakit.data, metrics and decoding in
lorakit.evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lorakit.data import Example
    from lorakit.evaluate.config import DecodeConfig

Split = Literal["train", "dev", "test"]
Evaluate = Callable[["nn.Module"], dict[str, float]]
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
    splits_in_directory: bool
    """Whether its reader finds every split inside one directory (E2E's and GLUE's releases), so that dev and test
    default to the train directory."""

    def read(self, path: str | Path, split: Split) -> list:
        """The records of `split` from a file, or from a directory holding the split's file."""
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


def write_text(path: Path, text: str) -> Path:
    """Write a predictions file atomically; returns its path."""
    from lorakit.core.atomic import atomic_write

    atomic_write(path, text.encode())
    return path


def lines_file(path: Path, lines: Sequence[Any]) -> Path:
    """One prediction per line (newlines inside a text become spaces)."""
    return write_text(path, "".join(str(line).replace("\n", " ") + "\n" for line in lines))
