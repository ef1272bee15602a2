"""Training configuration: pydantic schemas whose field docstrings are the CLI help, read from YAML plus overrides.

`load_config("configs/e2e-smollm2-lora.yaml", {"train.lr": "2e-4"})` checks every key, type and value before any
work starts and reports every problem in one ConfigError.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, field_validator, model_validator

from lorakit.core.config import LoraConfig, format_targets, parse_targets
from lorakit.core.errors import ConfigError
from lorakit.core.schema import Schema, apply_overrides, parse_value, read_yaml, validate
from lorakit.methods.options import MethodOptions
from lorakit.models.config import ModelConfig
from lorakit.tasks.config import DataConfig

Precision = Literal["auto", "bf16", "fp32"]


class TrainConfig(Schema):
    """The optimization loop's knobs (Hu et al., 2021, Appendix D lists the paper's values)."""

    steps: int = Field(1000, ge=1)
    """Optimizer steps to run in total."""
    batch_size: int = Field(8, ge=1)
    """Examples per optimizer step, over all processes and accumulation micro-batches (the global batch)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches each process accumulates per step; micro-batch = batch_size / (grad_accum x processes)."""
    lr: float = Field(2e-4, gt=0, allow_inf_nan=False)
    """Peak learning rate of AdamW (LoRA uses about 1e-4 to 1e-3)."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW's decoupled weight decay, applied to matrices only (not to biases or norm weights)."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    """AdamW's moment decay rates."""
    eps: float = Field(1e-8, gt=0)
    """AdamW's denominator epsilon."""
    warmup_steps: int = Field(0, ge=0)
    """Steps of linear warmup from 0 to lr; the rest decays linearly to 0 at `steps`."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """Label smoothing of the training cross-entropy (the paper uses 0.1 on E2E); dev loss never smooths."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this; null disables clipping."""
    seed: int = 0
    """Seeds data order and dropout; with the step and process rank it fixes every random draw."""
    precision: Precision = "auto"
    """Autocast dtype: bf16, fp32, or auto (bf16 where the CPU or GPU computes it natively, else fp32)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (about 30% slower)."""
    frozen_bf16: bool = False
    """Store the weights of Linear layers that do not train in bf16 (bf16 precision only). Autocast rounds them
    to bf16 for every matmul anyway, so results are unchanged; memory drops by half their size plus the per-step
    bf16 copies. The model keeps these bf16 weights after training."""
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    """auto (cuda if available), cpu, cuda or cuda:N. Under torchrun each process takes cuda:LOCAL_RANK."""
    log_every: int = Field(1, ge=1)
    """Write a metrics line (and TensorBoard point) every this many steps."""
    eval_every: int = Field(0, ge=0)
    """Evaluate on the dev set every this many steps; 0 evaluates only at the end."""
    save_every: int = Field(0, ge=0)
    """Write a resumable checkpoint every this many steps; 0 writes one only at the end and on interrupt."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the newest step checkpoints to keep on disk."""
    best_metric: str = "dev_loss"
    """Dev metric that picks the best checkpoint (saved to run_dir/best); names ending in 'loss' are minimized."""
    eval_batch_size: int = Field(16, ge=1)
    """Examples per batch when computing dev loss and task metrics."""
    batching: Literal["auto", "padded", "packed"] = "auto"
    """How a batch's examples become tensors: padded to the longest, or packed several to a row without padding
    between them (generation data; the same loss, fewer positions computed); auto packs where the model keeps
    packed examples apart (checked on two examples before training)."""

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        problems = []
        if self.frozen_bf16 and self.precision == "fp32":
            problems.append("frozen_bf16 needs bf16 precision (precision: bf16 or auto); it would change fp32 "
                            "results")
        if self.warmup_steps > self.steps:
            problems.append(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps}); lower it")
        if self.batch_size % self.grad_accum:
            problems.append(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _lora_in(value: Any) -> Any:
    """A YAML/CLI lora section: targets in the command-line syntax (core.targets.parse_targets), a single name
    where a list belongs."""
    if not isinstance(value, Mapping):
        return value
    value = dict(value)
    if isinstance(value.get("targets"), str):
        value["targets"] = parse_targets(value["targets"])
    if isinstance(value.get("modules_to_save"), str):
        value["modules_to_save"] = parse_targets(value["modules_to_save"])
    if isinstance(value.get("layers"), int):
        value["layers"] = [value["layers"]]
    return value


def _lora_out(lora: LoraConfig) -> dict[str, Any]:
    return {**lora.to_dict(), "targets": format_targets(lora.targets)}


LoraSection = Annotated[LoraConfig, BeforeValidator(_lora_in), PlainSerializer(_lora_out)]
"""LoraConfig as a config section: read and written in the command line's targets syntax."""


class RunConfig(Schema):
    """Everything `lorakit train` needs; saved resolved as run_dir/config.yaml."""

    method: str = "lora"
    """How the model is adapted: lora, full (every weight trains; saved as a full model directory), or a baseline
    or LoRA variant (ft-top2, bitfit, adapter-h, adapter-l, prefix-embed, prefix-layer, prompt-tuning, rslora, dora,
    pissa, lora+prefix)."""
    run_dir: str = "runs/default"
    """Where metrics, checkpoints, the best and final weights and the resolved config go."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraSection = LoraConfig()
    method_options: MethodOptions = MethodOptions()
    train: TrainConfig = TrainConfig()

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        from lorakit.methods import METHODS  # here: the schema itself stays importable without torch

        if name not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} (got {name!r})")
        return name


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "lora": LoraConfig,
                             "method_options": MethodOptions, "train": TrainConfig}
"""RunConfig's nested sections, by key."""


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The RunConfig from a YAML file (or the defaults) with dotted overrides like {"train.lr": "2e-4"} applied.

    String override values are YAML scalars ("2e-4", "null", "[q_proj, v_proj]"). Unknown keys and bad types or
    values anywhere are collected and raised together as one ConfigError.
    """
    from lorakit.methods import unused_options

    parsed = {key: parse_value(value) for key, value in (overrides or {}).items()}
    raw = apply_overrides(read_yaml(path) if path is not None else {}, parsed)
    config = config_from_dict(raw)
    unused = unused_options(config.method, config.method_options)  # here, not for saved runs' configs
    if unused:
        raise ConfigError("invalid training config:\n  - " + "\n  - ".join(unused))
    return config


def config_from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Build a RunConfig from a nested dict, reporting unknown keys, bad types and bad values all at once."""
    return validate(RunConfig, raw, "training config")
