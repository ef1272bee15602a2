"""LoraConfig: what to adapt and how (Hu et al., 2021, section 4)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from lorakit.core.errors import ConfigError

Bias = Literal["none", "all", "lora_only"]
Init = Literal["kaiming", "gaussian", "pissa"]
ALL_LINEAR = "all-linear"
REGEX_PREFIX = "re:"
BIAS_MODES: tuple[str, ...] = ("none", "all", "lora_only")
INIT_MODES: tuple[str, ...] = ("kaiming", "gaussian", "pissa")


@dataclass(frozen=True)
class LoraConfig:
    """A LoRA adapter's settings; validated on construction, every problem reported at once."""

    # As a section of a pydantic schema (lorakit train's `lora:`), the same settings as core.schema.Schema.
    __pydantic_config__ = {"extra": "forbid", "use_attribute_docstrings": True}  # noqa: RUF012

    rank: int = 8
    """Rank r of the update ΔW = (alpha/r)·B·A; B is (out x r), A is (r x in)."""
    alpha: float = 16.0
    """Scaling numerator: ΔW is multiplied by alpha/r (or alpha/√r with rslora)."""
    dropout: float = 0.0
    """Dropout probability on the LoRA path's input only; the base path never sees it."""
    targets: str | tuple[str, ...] = ("q_proj", "v_proj")
    """Modules to adapt: names or name suffixes (q_proj,v_proj), "all-linear", or a regular expression over whole
    module paths written "re:PATTERN" (in Python a plain string is a regular expression too, as in PEFT)."""
    bias: Bias = "none"
    """Which biases train: none, every bias in the model ("all"), or those of adapted modules ("lora_only")."""
    init: Init = "kaiming"
    """A's initialization: Kaiming-uniform (a=√5, as loralib), Gaussian (std 1/r), or PiSSA (top-r SVD of W)."""
    rslora: bool = False
    """Scale by alpha/√r instead of alpha/r (Kalajdzievski, 2023), so larger ranks keep learning."""
    modules_to_save: tuple[str, ...] = ()
    """Modules (name suffixes) trained in full and saved with the adapter, e.g. a classifier head."""
    layers: tuple[int, ...] | None = None
    """Only adapt modules inside these transformer block indices (the number after `layers.`/`h.`)."""
    slices: Mapping[str, tuple[bool, ...]] = field(default_factory=dict)
    """Fused projections adapted in part: {"c_attn": (True, False, True)} adapts q and v of GPT-2's qkv."""

    def __post_init__(self) -> None:
        # Normalize list inputs (from YAML/JSON/CLI) to tuples so the config stays hashable-ish and frozen.
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        elif isinstance(self.targets, str) and self.targets.startswith(REGEX_PREFIX):
            object.__setattr__(self, "targets", self.targets[len(REGEX_PREFIX):])
        if isinstance(self.modules_to_save, (list, str)):
            mts = (self.modules_to_save,) if isinstance(self.modules_to_save, str) else self.modules_to_save
            object.__setattr__(self, "modules_to_save", tuple(mts))
        if isinstance(self.layers, (list, int)):
            layers = (self.layers,) if isinstance(self.layers, int) else self.layers
            object.__setattr__(self, "layers", tuple(layers))
        object.__setattr__(self, "slices", {k: tuple(bool(b) for b in v) for k, v in dict(self.slices).items()})
        problems = self.problems()
        if problems:
            raise ConfigError("invalid LoraConfig:\n  - " + "\n  - ".join(problems))

    def problems(self) -> list[str]:
        """Every problem with this config, as sentences that say how to fix it."""
        out: list[str] = []
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            out.append(f"rank must be a positive integer (got {self.rank!r}); the paper uses 1 to 64, try 8")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not self.alpha > 0:
            out.append(f"alpha must be a positive number (got {self.alpha!r}); a common choice is 2 x rank")
        elif not math.isfinite(self.alpha):
            out.append(f"alpha must be finite (got {self.alpha!r})")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            out.append(f"dropout must be in [0, 1) (got {self.dropout!r})")
        if self.bias not in BIAS_MODES:
            out.append(f"bias must be one of {', '.join(BIAS_MODES)} (got {self.bias!r})")
        if self.init not in INIT_MODES:
            out.append(f"init must be one of {', '.join(INIT_MODES)} (got {self.init!r})")
        if isinstance(self.targets, str):
            if not self.targets:
                out.append("targets is an empty string; give module names like ('q_proj', 'v_proj')")
        elif not isinstance(self.targets, Sequence) or not self.targets:
            out.append("targets must name at least one module, e.g. ('q_proj', 'v_proj') or 'all-linear'")
        elif not all(isinstance(t, str) and t for t in self.targets):
            out.append(f"targets must be non-empty strings (got {self.targets!r})")
        if not all(isinstance(m, str) and m for m in self.modules_to_save):
            out.append(f"modules_to_save must be module names (got {self.modules_to_save!r})")
        if self.layers is not None and not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers
        ):
            out.append(f"layers must be non-negative block indices (got {self.layers!r})")
        for name, mask in self.slices.items():
            if len(mask) < 2 or not any(mask):
                out.append(f"slices[{name!r}] must mark at least one of two or more parts True (got {mask})")
        return out

    @property
    def scaling(self) -> float:
        """alpha/r, or alpha/√r with rslora."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        d = asdict(self)
        d["targets"] = self.targets if isinstance(self.targets, str) else list(self.targets)
        d["modules_to_save"] = list(self.modules_to_save)
        d["layers"] = None if self.layers is None else list(self.layers)
        d["slices"] = {k: list(v) for k, v in self.slices.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> LoraConfig:
        """Build from a dict; unknown keys are an error that lists the known ones."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown LoraConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**dict(d))


def parse_targets(value: str | Sequence[str]) -> str | tuple[str, ...]:
    """Targets as configs and the command line write them: "q_proj,v_proj" (names or suffixes), "all-linear", or
    "re:PATTERN" (a regular expression over whole module paths); a list is names. Returns LoraConfig.targets."""
    if not isinstance(value, str):
        return tuple(value)
    if value.startswith(REGEX_PREFIX) or value == ALL_LINEAR:
        return value.removeprefix(REGEX_PREFIX)
    return tuple(t.strip() for t in value.split(",") if t.strip())


def format_targets(targets: str | tuple[str, ...]) -> str | list[str]:
    """LoraConfig.targets as parse_targets reads it back: a list of names, "all-linear", or "re:PATTERN"."""
    if isinstance(targets, str):
        return targets if targets == ALL_LINEAR else REGEX_PREFIX + targets
    return list(targets)
