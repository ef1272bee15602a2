"""Training: one loop (`fit`), YAML configs, checkpoints with exact resume, data parallelism, method hooks.

`lorakit.train.hf.LorakitCallback` saves adapters from inside transformers.Trainer (imported on its own, since
it imports the Trainer machinery)."""

from lorakit.train.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config
from lorakit.train.loop import TrainingError, TrainResult, cross_entropy_sum, fit
from lorakit.train.methods import METHODS, Export, Method, adapter_export, full_export
from lorakit.train.run import train
from lorakit.train.schedule import lr_at

__all__ = [
    "METHODS",
    "DataConfig",
    "Export",
    "Method",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "adapter_export",
    "cross_entropy_sum",
    "fit",
    "full_export",
    "load_config",
    "lr_at",
    "train",
]
