"""CompareConfig: what `lorakit compare` trains and measures, checked up front (every problem at once).

Its model, data, lora, method_options and train sections are `lorakit train`'s own; the comparison adds which
methods, ranks and seeds to run, per-method learning rates, and how much to decode and time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, model_validator

from lorakit.core.config import LoraConfig
from lorakit.core.schema import Schema
from lorakit.methods.options import MethodOptions
from lorakit.models.config import ModelConfig
from lorakit.tasks.config import DataConfig
from lorakit.train.config import LoraSection, TrainConfig

Positive = Annotated[int, Field(ge=1)]
GENERATION_CURVE = "greedy_BLEU"
"""The convergence metric a comparison computes for generation tasks at every dev evaluation."""

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"max_length": 128, "dev_limit": 200},
    "lora": {"rank": 4, "alpha": 32.0},
    "train": {"precision": "fp32"},
}
"""Where a comparison's defaults differ from lorakit train's: shorter examples and a dev subset keep a
comparison of many runs affordable, the paper's E2E LoRA (r=4, alpha=32), and fp32 so that no method's numbers
depend on bf16 rounding."""


class CompareConfig(Schema):
    """One comparison: every method x seed (x rank) trained under the same budget on the same data."""

    out: str
    """Where runs/, results.json, report.md and report.html go."""
    methods: tuple[str, ...] = ("lora", "full")
    """The methods to train (see `lorakit train --help`, method)."""
    ranks: tuple[Positive, ...] = ()
    """LoRA-family ranks to sweep (Table 6); empty uses lora.rank only."""
    seeds: int = Field(3, ge=1)
    """Seeds per method (mean ± std in the report)."""
    lr: dict[str, float] = {}
    """Peak learning rates by method ('*' for every method), over each method's default (MethodSpec.lr):
    {lora: 2e-4, full: 5e-5}, or on the command line lora=2e-4,full=5e-5."""
    generate_limit: int = Field(50, ge=1)
    """Generation tasks: distinct dev inputs decoded (beam search) at the end of each run for BLEU, NIST, METEOR,
    ROUGE-L and CIDEr."""
    curve_inputs: int = Field(20, ge=0)
    """Generation tasks: distinct dev inputs decoded greedily at every dev evaluation for the BLEU convergence
    curve (0: none)."""
    beams: int = Field(4, ge=1)
    """Beam width of the final decoding."""
    latency_batches: tuple[Positive, ...] = (1, 8)
    """Batch sizes of the forward-latency grid (Table 1 style)."""
    latency_lengths: tuple[Positive, ...] = (64, 256)
    """Sequence lengths of the forward-latency grid."""
    latency_repeats: int = Field(10, ge=1)
    """Timed forwards per cell and variant (median reported), interleaved across variants."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = Field(default_factory=lambda: DataConfig(**DEFAULTS["data"]))
    lora: LoraSection = LoraConfig(**DEFAULTS["lora"])
    method_options: MethodOptions = MethodOptions()
    train: TrainConfig = TrainConfig(**DEFAULTS["train"])
    """The shared budget (steps, batch size, warmup, ...); eval_every 0 picks steps // 5, five points per
    convergence curve. A comparison sets each method's lr (see lr), save_every, keep_checkpoints and best_metric
    itself."""

    @model_validator(mode="before")
    @classmethod
    def _compare_defaults(cls, data: Any) -> Any:
        """A section given in part keeps the comparison's own defaults (DEFAULTS) for the rest; a single learning
        rate applies to every method."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if isinstance(data.get("lr"), (int, float)) and not isinstance(data["lr"], bool):
            data["lr"] = {"*": data["lr"]}
        for section, defaults in DEFAULTS.items():
            if isinstance(data.get(section), Mapping):
                data[section] = {**defaults, **data[section]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CompareConfig:
        from lorakit.methods import METHODS

        problems = []
        unknown = [m for m in (*self.methods, *self.lr) if m not in METHODS and m != "*"]
        if unknown:
            problems.append(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            f"known methods are {', '.join(METHODS)}")
        if not self.methods:
            problems.append("methods is empty; name at least one, e.g. lora,full")
        if len(set(self.methods)) != len(self.methods):
            problems.append(f"methods repeat a name: {', '.join(self.methods)}")
        if self.train.lr != TrainConfig().lr:
            problems.append("train.lr is not used by a comparison: each method has its own default; set them with "
                            "lr (e.g. --lr 2e-4 for every method, or --lr lora=2e-4,full=5e-5)")
        if self.train.steps < 2 * self.evaluation_interval:
            problems.append(
                f"a budget of {self.train.steps} steps with evaluation every {self.evaluation_interval} gives fewer "
                "than two dev evaluations, too few for a convergence curve; raise train.steps (at least 10 for "
                "the automatic interval) or lower train.eval_every"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def evaluation_interval(self) -> int:
        return self.train.eval_every or max(1, self.train.steps // 5)

    def learning_rate(self, method: str) -> float:
        from lorakit.methods import METHODS

        return self.lr.get(method, self.lr.get("*", METHODS[method].lr))

    def variants(self) -> list[tuple[str, str, int | None]]:
        """(label, method, rank) of every trained variant: LoRA-family methods once per swept rank."""
        from lorakit.methods import METHODS

        out = []
        for m in self.methods:
            lora_family = METHODS[m].family == "lora"
            if lora_family and self.ranks:
                out += [(f"{m}-r{r}", m, r) for r in self.ranks]
            else:
                out.append((m, m, self.lora.rank if lora_family else None))
        return out
