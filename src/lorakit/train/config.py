"""Training configuration: frozen dataclasses whose field docstrings are the CLI help, read from YAML plus overrides.

`load_config("configs/e2e-smollm2-lora.yaml", {"train.lr": "2e-4"})` checks every key and type before any work
starts and reports every problem in one ConfigError.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml

from lorakit.core.config import LoraConfig
from lorakit.core.errors import ConfigError

Precision = Literal["auto", "bf16", "fp32"]
Task = Literal["e2e", "glue", "instruct", "jsonl"]


@dataclass(frozen=True)
class TrainConfig:
    """The optimization loop's knobs (Hu et al., 2021, Appendix D lists the paper's values)."""

    steps: int = 1000
    """Optimizer steps to run in total."""
    batch_size: int = 8
    """Examples per optimizer step, over all processes and accumulation micro-batches (the global batch)."""
    grad_accum: int = 1
    """Micro-batches each process accumulates per step; micro-batch = batch_size / (grad_accum x processes)."""
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay, applied to matrices only (not to biases or norm weights)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's moment decay rates."""
    eps: float = 1e-8
    """AdamW's denominator epsilon."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to lr; the rest decays linearly to 0 at `steps`."""
    label_smoothing: float = 0.0
    """Label smoothing of the training cross-entropy (the paper uses 0.1 on E2E); dev loss never smooths."""
    max_grad_norm: float | None = 1.0
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
    device: str = "auto"
    """auto (cuda if available), cpu, cuda or cuda:N. Under torchrun each process takes cuda:LOCAL_RANK."""
    log_every: int = 1
    """Write a metrics line (and TensorBoard point) every this many steps."""
    eval_every: int = 0
    """Evaluate on the dev set every this many steps; 0 evaluates only at the end."""
    save_every: int = 0
    """Write a resumable checkpoint every this many steps; 0 writes one only at the end and on interrupt."""
    keep_checkpoints: int = 2
    """How many of the newest step checkpoints to keep on disk."""
    best_metric: str = "dev_loss"
    """Dev metric that picks the best checkpoint (saved to run_dir/best); names ending in 'loss' are minimized."""
    eval_batch_size: int = 16
    """Examples per batch when computing dev loss and task metrics."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        problems = self.problems()
        if problems:
            raise ConfigError("invalid TrainConfig:\n  - " + "\n  - ".join(problems))

    def problems(self) -> list[str]:
        """Every problem with this config, as sentences that say how to fix it."""
        out = _type_problems(self)
        if out:
            return out
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                out.append(f"{name} must be 0 or more (got {getattr(self, name)})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            out.append(f"lr must be a positive number (got {self.lr}); LoRA uses about 1e-4 to 1e-3")
        if self.weight_decay < 0:
            out.append(f"weight_decay must be 0 or more (got {self.weight_decay})")
        if not all(0 <= b < 1 for b in self.betas):
            out.append(f"betas must lie in [0, 1) (got {self.betas})")
        if not self.eps > 0:
            out.append(f"eps must be positive (got {self.eps})")
        if not 0 <= self.label_smoothing < 1:
            out.append(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            out.append(f"max_grad_norm must be positive or null (got {self.max_grad_norm})")
        if self.frozen_bf16 and self.precision == "fp32":
            out.append("frozen_bf16 needs bf16 precision (precision: bf16 or auto); it would change fp32 results")
        if self.warmup_steps > self.steps:
            out.append(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps}); lower it")
        if self.batch_size % self.grad_accum:
            out.append(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            out.append(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        return out


@dataclass(frozen=True)
class ModelConfig:
    """Which model to fine-tune."""

    name: str = "smollm2-135m"
    """A built-in model name (see `lorakit info`) or a local transformers directory."""

    def __post_init__(self) -> None:
        _raise_if(self, _type_problems(self))


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they become tokens."""

    task: Task = "e2e"
    """e2e (MR -> text), glue (sequence classification), instruct (chat template, loss on the answer) or jsonl
    ({"prompt", "completion"} lines)."""
    train: str = "data/e2e"
    """Training data: a file, or a directory where the task's reader finds its 'train' split."""
    dev: str | None = None
    """Dev data: a file or directory ('dev' split); null uses the train directory's dev split for e2e and glue,
    and no dev set for instruct and jsonl."""
    glue_task: str | None = None
    """For task glue: sst2, mrpc, rte or cola."""
    max_length: int = 512
    """Tokens per example; longer ones are cut (the prompt first) with a warning."""
    train_limit: int | None = None
    """Use only the first N training examples (quick runs); null uses all."""
    dev_limit: int | None = None
    """Use only the first N dev examples; null uses all."""

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if not problems:
            if self.max_length < 2:
                problems.append(f"max_length must be at least 2 (got {self.max_length})")
            for name in ("train_limit", "dev_limit"):
                if getattr(self, name) is not None and getattr(self, name) < 1:
                    problems.append(f"{name} must be at least 1 or null (got {getattr(self, name)})")
            if self.task == "glue" and self.glue_task not in ("sst2", "mrpc", "rte", "cola"):
                problems.append(f"task glue needs glue_task: sst2, mrpc, rte or cola (got {self.glue_task!r})")
            if self.task != "glue" and self.glue_task is not None:
                problems.append(f"glue_task applies only to task glue, not {self.task!r}; remove it")
        _raise_if(self, problems)


@dataclass(frozen=True)
class MethodOptions:
    """Sizes of the non-LoRA methods (LoRA's rank lives in the lora section)."""

    bottleneck: int = 16
    """r of adapter-h and adapter-l: each adapter maps d -> r -> d (Houlsby et al., 2019)."""
    prefix_length: int = 16
    """l_p of prefix-embed, prefix-layer, prompt-tuning and lora+prefix: trainable positions prepended to every
    input (Li & Liang, 2021)."""

    def __post_init__(self) -> None:
        _raise_if(self, [f"{f.name} must be a positive integer (got {getattr(self, f.name)!r})"
                         for f in dataclasses.fields(self) if not _matches(getattr(self, f.name), int)
                         or getattr(self, f.name) < 1])


@dataclass(frozen=True)
class RunConfig:
    """Everything `lorakit train` needs; saved resolved as run_dir/config.yaml."""

    method: str = "lora"
    """How the model is adapted: lora, full (every weight trains; saved as a full model directory), or a baseline
    or LoRA variant (ft-top2, bitfit, adapter-h, adapter-l, prefix-embed, prefix-layer, prompt-tuning, rslora, dora,
    pissa, lora+prefix)."""
    run_dir: str = "runs/default"
    """Where metrics, checkpoints, the best and final weights and the resolved config go."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    method_options: MethodOptions = field(default_factory=MethodOptions)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _raise_if(self, _type_problems(self) or _scalar_problems({"method": self.method}))

    def to_dict(self) -> dict[str, Any]:
        """A YAML/JSON-ready nested dict of every field."""
        return {
            "method": self.method,
            "run_dir": self.run_dir,
            "model": _plain(dataclasses.asdict(self.model)),
            "data": _plain(dataclasses.asdict(self.data)),
            "lora": self.lora.to_dict(),
            "method_options": dataclasses.asdict(self.method_options),
            "train": _plain(dataclasses.asdict(self.train)),
        }


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "lora": LoraConfig,
                             "method_options": MethodOptions, "train": TrainConfig}
"""RunConfig's nested sections, by key."""


def load_config(path: str | Path | None = None, overrides: Mapping[str, str] | None = None) -> RunConfig:
    """The RunConfig from a YAML file (or the defaults) with dotted overrides like {"train.lr": "2e-4"} applied.

    Override values are YAML scalars ("2e-4", "null", "[q_proj, v_proj]"). Unknown keys and bad types anywhere
    are collected and raised together as one ConfigError.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist; pass a YAML file such as configs/*.yaml")
        try:
            raw = yaml.load(file.read_text(), Loader=YamlLoader) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{file} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{file} must hold a YAML mapping of sections, found {type(raw).__name__}")
    problems: list[str] = []
    for key, text in (overrides or {}).items():
        head, _, rest = key.partition(".")
        target = raw.setdefault(head, {}) if rest else raw
        if not isinstance(target, dict):
            problems.append(f"cannot set {key}: {head} is not a section")
            continue
        target[rest or head] = parse_value(text)
    config = config_from_dict(raw, problems)
    unused = _unused_options(config.method, config.method_options)  # here, not for saved runs' configs
    if unused:
        raise ConfigError("invalid training config:\n  - " + "\n  - ".join(unused))
    return config


def config_from_dict(raw: Mapping[str, Any], problems: list[str] | None = None) -> RunConfig:
    """Build a RunConfig from a nested dict, reporting unknown keys, bad types and bad values all at once."""
    problems = list(problems or [])
    top = {f.name for f in dataclasses.fields(RunConfig)}
    problems += [f"unknown key {k!r}; known keys are {', '.join(sorted(top))}" for k in raw if k not in top]
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        given = raw.get(name) or {}
        if not isinstance(given, Mapping):
            problems.append(f"{name} must be a mapping of settings, got {type(given).__name__}")
            continue
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in given if k not in known]
        problems += [f"unknown key {name}.{k}; {name} has {', '.join(sorted(known))}" for k in unknown]
        try:
            sections[name] = cls(**{k: _coerce(cls, k, v) for k, v in given.items() if k in known})
        except ConfigError as e:
            problems += [f"{name}.{line.strip(' -')}" for line in str(e).splitlines()[1:]] or [f"{name}: {e}"]
        except TypeError as e:  # e.g. a string where a mapping belongs, inside LoraConfig's normalization
            problems.append(f"{name}: {e}")
    scalars = {k: raw[k] for k in ("method", "run_dir") if k in raw}
    problems += _scalar_problems(scalars)
    if problems:
        raise ConfigError("invalid training config:\n  - " + "\n  - ".join(problems))
    return RunConfig(**scalars, **sections)


OPTION_USERS: dict[str, tuple[str, ...]] = {
    "bottleneck": ("adapter-h", "adapter-l"),
    "prefix_length": ("prefix-embed", "prefix-layer", "prompt-tuning", "lora+prefix"),
}
"""The methods each method_options field sizes."""


def _unused_options(method: str, options: MethodOptions) -> list[str]:
    """A method_options value changed from its default for a method that never reads it (a typo'd method, or an
    option meant for another run) would be silently ignored; say so instead."""
    defaults = MethodOptions()
    return [f"method_options.{name} is {getattr(options, name)}, but method {method!r} does not use it (it sizes "
            f"{', '.join(users)}); remove it or choose one of those methods"
            for name, users in OPTION_USERS.items()
            if method not in users and getattr(options, name) != getattr(defaults, name)]


def _scalar_problems(scalars: Mapping[str, Any]) -> list[str]:
    from lorakit.train.methods import METHODS

    out = [f"{k} must be a string (got {v!r})" for k, v in scalars.items() if not isinstance(v, str)]
    method = scalars.get("method", "lora")
    if isinstance(method, str) and method not in METHODS:
        out.append(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    return out


def parse_value(text: str) -> Any:
    """A command-line value read as a YAML scalar or flow collection: '2e-4' -> 0.0002, 'null' -> None."""
    return yaml.load(text, Loader=YamlLoader) if isinstance(text, str) else text


def field_help(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal after it), as one line for CLI help."""
    return dict(_field_docs(cls))


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads 2e-4 as a float (YAML 1.1 requires a dot: 2.0e-4)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


@cache
def _field_docs(cls: type) -> tuple[tuple[str, str], ...]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    out = []
    for node, after in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            out.append((node.target.id, " ".join(after.value.value.split())))
    return tuple(out)


def _coerce(cls: type, key: str, value: Any) -> Any:
    """YAML lists become tuples where the field is a tuple, and ints become floats where it is a float."""
    hint = typing.get_type_hints(cls)[key]
    if isinstance(value, list) and _allows(hint, tuple):
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool) and _allows(hint, float) and not _allows(hint, int):
        return float(value)
    return value


def _allows(hint: Any, kind: type) -> bool:
    if hint is kind or typing.get_origin(hint) is kind:
        return True
    return any(_allows(a, kind) for a in typing.get_args(hint)) if _is_union(hint) else False


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_problems(obj: Any) -> list[str]:
    hints = typing.get_type_hints(type(obj))
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            out.append(f"{f.name} must be {_describe(hints[f.name])} (got {value!r})")
    return out


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if _is_union(hint):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if _is_union(hint):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is tuple:
        return "a list of " + (f"{len(args)} numbers" if args[-1] is not Ellipsis else _describe(args[0]) + "s")
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _raise_if(obj: Any, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"invalid {type(obj).__name__}:\n  - " + "\n  - ".join(problems))


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
