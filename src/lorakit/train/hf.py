"""Training a lorakit-wrapped model with transformers.Trainer instead of lorakit's loop.

Trainer works on a wrapped model as it is (inject keeps the model's class, freezes the base, and the forward
computes the loss from `labels`); what it cannot know is lorakit's adapter format, since its checkpoints hold the
full state dict. Add `LorakitCallback()` to `callbacks=` and each checkpoint, plus output_dir at the end, also gets
the adapter in PEFT's format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lorakit.core.io import save_adapter


class LorakitCallback(TrainerCallback):
    """Write adapter `name` (PEFT format) into output_dir/checkpoint-N at every save and into output_dir at the end."""

    def __init__(self, name: str = "default") -> None:
        self.name = name

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None,
                **kwargs: Any) -> None:
        if state.is_world_process_zero and model is not None:
            save_adapter(model, Path(args.output_dir) / f"checkpoint-{state.global_step}", self.name)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and model is not None:
            save_adapter(model, args.output_dir, self.name)
