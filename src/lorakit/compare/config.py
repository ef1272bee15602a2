"""CompareConfig: what `lorakit compare` trains and measures, checked up front (every problem at once)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lorakit.core.errors import ConfigError

LEARNING_RATES: dict[str, float] = {
    "full": 5e-5, "ft-top2": 1e-4, "bitfit": 1e-3, "adapter-h": 1e-3, "adapter-l": 1e-3,
    "prefix-embed": 1e-2, "prefix-layer": 5e-3, "prompt-tuning": 1e-2,
    "lora": 5e-4, "rslora": 5e-4, "dora": 5e-4, "pissa": 5e-4, "lora+prefix": 5e-4,
}
"""Default peak learning rate per method: each family needs its own (full FT diverges at LoRA's rates, prompts
barely move at them). Override with `--lr 2e-4` (all) or `--lr lora=2e-4,full=3e-5`."""


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: every method x seed (x rank) trained under the same budget on the same data."""

    model: str
    """Built-in model name or local transformers directory."""
    task: Literal["e2e", "glue"]
    data: str
    """Data directory (e2e: the CSV release; glue: the task's directory)."""
    out: str
    """Where runs/, results.json, report.md and report.html go."""
    methods: tuple[str, ...] = ("lora", "full")
    glue_task: str | None = None
    """sst2, mrpc, rte or cola, for task glue."""
    ranks: tuple[int, ...] = ()
    """LoRA-family ranks to sweep (Table 6); empty uses `rank` only."""
    seeds: int = 3
    steps: int = 1000
    batch_size: int = 8
    lr: tuple[tuple[str, float], ...] = ()
    """(method, lr) overrides of LEARNING_RATES; method '*' sets every method."""
    warmup_steps: int = 0
    eval_every: int = 0
    """Dev evaluation every this many steps; 0 picks steps // 5 (five points per convergence curve)."""
    max_length: int = 128
    train_limit: int | None = None
    dev_limit: int | None = 200
    """Dev examples for dev loss (and GLUE metrics) at each evaluation."""
    generate_limit: int = 50
    """E2E: distinct dev inputs decoded (beam search) at the end of each run for BLEU, NIST, METEOR, ROUGE-L, CIDEr."""
    curve_inputs: int = 20
    """E2E: distinct dev inputs decoded greedily at every dev evaluation for the BLEU convergence curve (0: none)."""
    beams: int = 4
    rank: int = 4
    alpha: float = 32.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    bottleneck: int = 16
    prefix_length: int = 16
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "fp32"
    latency_batches: tuple[int, ...] = (1, 8)
    latency_lengths: tuple[int, ...] = (64, 256)
    latency_repeats: int = 10
    """Timed forwards per cell and variant (median reported), interleaved across variants."""

    def __post_init__(self) -> None:
        problems = []
        from lorakit.methods import ALL

        unknown = [m for m in self.methods if m not in ALL]
        if unknown:
            problems.append(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            f"known methods are {', '.join(ALL)}")
        if not self.methods:
            problems.append("methods is empty; name at least one, e.g. lora,full")
        if len(set(self.methods)) != len(self.methods):
            problems.append(f"methods repeat a name: {', '.join(self.methods)}")
        for name in ("seeds", "steps", "batch_size", "generate_limit", "beams", "rank", "bottleneck",
                     "prefix_length", "latency_repeats", "max_length"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if any(r < 1 for r in self.ranks):
            problems.append(f"ranks must be positive (got {self.ranks})")
        if any(n < 1 for n in (*self.latency_batches, *self.latency_lengths)):
            problems.append("latency batch sizes and lengths must be positive")
        if self.curve_inputs < 0:
            problems.append(f"curve_inputs must be 0 (no BLEU curve) or more (got {self.curve_inputs})")
        if self.eval_every < 0:
            problems.append(f"eval_every must be 0 (automatic) or more (got {self.eval_every})")
        elif self.steps >= 1 and self.steps < 2 * self.evaluation_interval:
            problems.append(
                f"a budget of {self.steps} steps with evaluation every {self.evaluation_interval} gives fewer than "
                "two dev evaluations, too few for a convergence curve; raise --steps (at least 10 for the "
                "automatic interval) or lower --eval-every"
            )
        if self.task == "glue" and self.glue_task not in ("sst2", "mrpc", "rte", "cola"):
            problems.append(f"task glue needs --glue-task sst2, mrpc, rte or cola (got {self.glue_task!r})")
        bad_lr = [m for m, _ in self.lr if m != "*" and m not in ALL]
        if bad_lr:
            problems.append(f"--lr names unknown methods {bad_lr}; use method=value with known methods or one value")
        if self.dev_limit is not None and self.dev_limit < 1:
            problems.append(f"dev_limit must be at least 1 or unset (got {self.dev_limit})")
        if problems:
            raise ConfigError("invalid comparison:\n  - " + "\n  - ".join(problems))

    @property
    def evaluation_interval(self) -> int:
        return self.eval_every or max(1, self.steps // 5)

    def learning_rate(self, method: str) -> float:
        given = dict(self.lr)
        return given.get(method, given.get("*", LEARNING_RATES[method]))

    def variants(self) -> list[tuple[str, str, int | None]]:
        """(label, method, rank) of every trained variant: LoRA-family methods once per swept rank."""
        from lorakit.methods import LORA_FAMILY

        out = []
        for m in self.methods:
            if m in LORA_FAMILY and self.ranks:
                out += [(f"{m}-r{r}", m, r) for r in self.ranks]
            else:
                out.append((m, m, self.rank if m in LORA_FAMILY else None))
        return out
