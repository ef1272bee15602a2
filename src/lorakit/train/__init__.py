"""Training: one loop (`fit`), YAML configs, checkpoints with exact resume, data parallelism.

`lorakit.train.hf.LorakitTrainer` trains lorakit-wrapped models with transformers.Trainer (imported on its own,
since it imports the Trainer machinery)."""

from lorakit.core.lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "lorakit.train.config": ["RunConfig", "TrainConfig", "load_config"],
    "lorakit.train.loop": ["TrainingError", "TrainResult", "cross_entropy_sum", "fit"],
    "lorakit.train.run": ["train"],
    "lorakit.train.schedule": ["lr_at"],
})

__all__ = ["RunConfig", "TrainConfig", "TrainResult", "TrainingError", "cross_entropy_sum", "fit", "load_config",
           "lr_at", "train"]
