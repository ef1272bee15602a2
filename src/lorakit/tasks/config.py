"""DataConfig: which task, where its data is, and how it becomes tokens (train's and compare's `data:` section)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from lorakit.core.schema import Schema
from lorakit.tasks.base import Split, Task
from lorakit.tasks.registry import TASKS, task_named, task_problems


class DataConfig(Schema):
    """Where the examples come from and how they become tokens."""

    task: str = "e2e"
    """e2e (MR -> text), glue (sequence classification), instruct (chat template, loss on the answer) or jsonl
    ({"prompt", "completion"} lines)."""
    train: str = "data/e2e"
    """Training data: a file, or a directory where the task's reader finds its 'train' split."""
    dev: str | None = None
    """Dev data: a file or directory ('dev' split); null uses the train directory's dev split for e2e and glue,
    and no dev set for instruct and jsonl."""
    test: str | None = None
    """Test data (lorakit eval --split test): a file or directory; null uses the train directory's test split for
    e2e and glue."""
    glue_task: str | None = None
    """For task glue: sst2, mrpc, rte or cola."""
    max_length: int = Field(512, ge=2)
    """Tokens per example; longer ones are cut (the prompt first) with a warning."""
    train_limit: int | None = Field(None, ge=1)
    """Use only the first N training examples (quick runs); null uses all."""
    dev_limit: int | None = Field(None, ge=1)
    """Use only the first N dev examples; null uses all."""

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        if name not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)} (got {name!r})")
        return name

    @model_validator(mode="after")
    def _glue_task_fits(self) -> DataConfig:
        problems = task_problems(self.task, self.glue_task)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def task_for(data: DataConfig) -> Task:
    """The Task a data config describes."""
    return task_named(data.task, data.glue_task)


def read_split(data: DataConfig, split: Split) -> list | None:
    """The records of a split from the config's path for it (dev and test default to the train directory where
    the task keeps its splits in one), cut to train_limit / dev_limit; None when the split has no data."""
    task = task_for(data)
    path = {"train": data.train, "dev": data.dev, "test": data.test}[split]
    if path is None and task.splits_in_directory and Path(data.train).is_dir():
        path = data.train
    if path is None:
        return None
    records = task.read(path, split)
    limit = {"train": data.train_limit, "dev": data.dev_limit, "test": None}[split]
    return records[:limit] if limit else records
