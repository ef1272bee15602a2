"""The tasks by name: `task_for(data_config)` is the one place that turns a task name into its behaviour."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lorakit.data import GLUE_TASKS
from lorakit.tasks.base import Task
from lorakit.tasks.generation import E2E, INSTRUCT, JSONL
from lorakit.tasks.glue import Glue

if TYPE_CHECKING:
    from lorakit.tasks.config import DataConfig

GENERATION: dict[str, Task] = {t.name: t for t in (E2E, INSTRUCT, JSONL)}
TASKS: tuple[str, ...] = (*GENERATION, "glue")
"""Every task name DataConfig.task accepts."""


def task_problems(name: str, glue_task: str | None) -> list[str]:
    """What is wrong with a known task's GLUE sub-task, as sentences that say what to write."""
    if name == "glue" and glue_task not in GLUE_TASKS:
        return [f"task glue needs glue_task: {', '.join(GLUE_TASKS)} (got {glue_task!r})"]
    if name != "glue" and glue_task is not None:
        return [f"glue_task applies only to task glue, not {name!r}; remove it"]
    return []


def task_for(data: DataConfig) -> Task:
    """The Task a data config describes."""
    return Glue(data.glue_task) if data.task == "glue" else GENERATION[data.task]
