"""`train(config)`: what `lorakit train` does -- load the model, prepare it by method, read the data, call fit."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from lorakit.core.errors import ConfigError
from lorakit.core.params import count_parameters
from lorakit.methods import METHODS, Export
from lorakit.tasks import read_split, task_for
from lorakit.train import checkpoint, distributed
from lorakit.train.config import RunConfig, config_from_dict
from lorakit.train.loop import TrainResult, fit

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CONFIG_FILE = "config.yaml"
PARAMS_FILE = "params.json"
"""The method's trainable and total parameter counts, written when the run starts."""


def train(config: RunConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Run `config` from the start (run_dir must hold no checkpoint) or, with resume, from its newest checkpoint."""
    from lorakit.models import load

    run = Path(config.run_dir)
    _check_run_dir(run, config, resume)
    task = task_for(config.data)
    train_records = read_split(config.data, "train")  # read first: a data error costs no model load
    dev_records = read_split(config.data, "dev")
    # Seeds the LoRA A matrices and any fresh classifier head; a resumed run overwrites both from its checkpoint.
    torch.manual_seed(config.train.seed)
    model, tokenizer = load(config.model.name, kind=task.kind, num_labels=task.num_labels)
    export = _with_tokenizer(METHODS[config.method].prepare(model, config.lora, config.method_options), tokenizer)
    max_length = config.data.max_length
    train_examples = task.tokenize(train_records, tokenizer, max_length)
    dev_examples = task.tokenize(dev_records, tokenizer, max_length) if dev_records else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    where = distributed.setup(config.train.device)
    if where.is_main:
        run.mkdir(parents=True, exist_ok=True)
        (run / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        trainable, total = count_parameters(model)
        counts = {"method": config.method, "trainable_params": trainable, "total_params": total}
        (run / PARAMS_FILE).write_text(json.dumps(counts, indent=2) + "\n")
        if progress:
            print(f"{config.method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)",
                  file=sys.stderr)
    return fit(
        model, train_examples, config.train, dev_examples, run, pad_id=pad_id, export=export,
        evaluate=task.dev_metrics(dev_examples, pad_id) if dev_examples else None, resume=resume, progress=progress,
    )


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run saved in run_dir/config.yaml."""
    file = Path(run_dir) / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{file} does not exist; is {run_dir} a run directory written by lorakit train?")
    return config_from_dict(yaml.safe_load(file.read_text()) or {})


def _check_run_dir(run: Path, config: RunConfig, resume: bool) -> None:
    if not resume and checkpoint.checkpoints(run):
        # Checked here as well as in fit, so the mistake is reported before the model loads.
        raise ConfigError(f"{run} already holds checkpoints of a run; pass --resume to continue it, or set "
                          "--run_dir to a new directory")
    if resume and (run / CONFIG_FILE).is_file():
        before, now = read_run_config(run).to_dict(), config.to_dict()
        # The device may change across a resume (e.g. resume a GPU run on CPU); everything else must match.
        before["train"].pop("device")
        now["train"].pop("device")
        changed = [f"{section}.{key}" for section, values in now.items() if isinstance(values, dict)
                   for key in values if before.get(section, {}).get(key) != values[key]]
        changed += [key for key in now if not isinstance(now[key], dict) and before.get(key) != now[key]]
        if changed:
            raise ConfigError(f"cannot resume {run} with a different config: {', '.join(changed)} changed. Resume "
                              f"with the saved config (lorakit train {run}/{CONFIG_FILE} --resume) or use a new "
                              "run_dir")


def _with_tokenizer(export: Export, tokenizer: PreTrainedTokenizerBase) -> Export:
    """The export plus the tokenizer in the same directory, so `lorakit eval` can load either one alone."""

    def write(model: torch.nn.Module, directory: Path) -> None:
        export.write(model, directory)
        tokenizer.save_pretrained(directory)

    return Export(export.name, write)
