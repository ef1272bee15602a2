"""Training a lorakit-wrapped model with transformers.Trainer instead of lorakit's loop: `LorakitTrainer`.

Trainer trains a wrapped model as it is (inject keeps the model's class, freezes the base, and the forward computes
the loss from `labels`). What it cannot know is the adapter format: it saves full state dicts, and reads adapters
back only for PEFT's own models. LorakitTrainer makes save_model and every checkpoint write the adapter in PEFT's
format (what PeftModel.from_pretrained and lorakit.load_adapter read), and makes resume_from_checkpoint and
load_best_model_at_end read it back into the adapter being trained. A plain Trainer on a wrapped model stops at
its first save (core.inject.RefusedSave) rather than write a file that loads as a broken model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from lorakit.core.errors import AdapterError, AdapterFileError
from lorakit.core.io import restore_adapter, save_adapter
from lorakit.core.io.peft import CONFIG_FILE
from lorakit.core.state import state_of


class LorakitTrainer(Trainer):
    """transformers.Trainer for a lorakit-wrapped model: saves, resumes from and reloads adapter `adapter`.

    `adapter` defaults to the model's active adapter. Every other argument is Trainer's.
    """

    def __init__(self, model: nn.Module, *args: Any, adapter: str | None = None, **kwargs: Any) -> None:
        state = state_of(model)
        self.adapter = adapter or state.active
        state.require(self.adapter)
        super().__init__(model, *args, **kwargs)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise AdapterError("LorakitTrainer saves the adapter from the model's own parameters, which FSDP and "
                               "DeepSpeed shard across processes; train data-parallel (torchrun, DDP) instead")

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The adapter (adapter_config.json, adapter_model.safetensors, lorakit.json) where Trainer would write the
        whole model, then what Trainer writes beside it: the tokenizer and training_args.bin."""
        if not self.args.should_save:
            return
        directory = Path(output_dir or self.args.output_dir)
        save_adapter(self.model, directory, self.adapter)
        tokenizer = self.processing_class or getattr(self.data_collator, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        torch.save(self.args, os.path.join(directory, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        self._restore(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._restore(self.state.best_model_checkpoint)

    def _restore(self, checkpoint: str) -> None:
        if not (Path(checkpoint) / CONFIG_FILE).is_file():
            raise AdapterFileError(f"{checkpoint} holds no adapter ({CONFIG_FILE}); LorakitTrainer resumes from "
                                   "checkpoints it wrote itself, not from a plain Trainer's full state dicts")
        restore_adapter(self.model, checkpoint, self.adapter)
