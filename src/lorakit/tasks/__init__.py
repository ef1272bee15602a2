"""Tasks: what lorakit trains on and scores (E2E, GLUE, instruction data, JSON Lines), behind one `Task` protocol.

`task_for(DataConfig(task="glue", glue_task="sst2", train=...))` reads, tokenizes, predicts, scores and writes
predictions for that task; nothing else in lorakit tests a task's name.
"""

from lorakit.core.lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "lorakit.tasks.base": ["Evaluate", "Split", "Task"],
    "lorakit.tasks.config": ["DataConfig", "read_split", "task_for"],
    "lorakit.tasks.registry": ["TASKS", "task_named"],
})

__all__ = ["TASKS", "DataConfig", "Evaluate", "Split", "Task", "read_split", "task_for", "task_named"]
