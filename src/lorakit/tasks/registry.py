"""The tasks by name: `task_named` is the one place that turns a task name into its behaviour."""

from __future__ import annotations

from lorakit.data.glue import GLUE_TASKS
from lorakit.tasks.base import Task
from lorakit.tasks.generation import E2E, INSTRUCT, JSONL
from lorakit.tasks.glue import Glue

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


def task_named(name: str, glue_task: str | None = None) -> Task:
    """The Task called `name` (with its GLUE sub-task for glue)."""
    return Glue(glue_task or "") if name == "glue" else GENERATION[name]
