"""Choosing each row's next token: greedy, or temperature + nucleus (top-p) sampling with a per-request seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lorakit.core.errors import ConfigError
from lorakit.serve import kernels


@dataclass(frozen=True)
class SamplingParams:
    """How one request generates; validated on construction, every problem reported at once."""

    max_tokens: int = 16
    """Most new tokens to generate (the request also stops at end-of-sequence or a stop string)."""
    temperature: float = 1.0
    """Logits are divided by this before sampling; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Sample only from the smallest set of tokens whose probabilities add up to top_p."""
    stop: tuple[str, ...] = ()
    """Strings that end the output; the stop string itself is not returned."""
    seed: int | None = None
    """Seed of this request's own random generator: the same seed gives the same output, busy server or not."""
    ignore_eos: bool = False
    """Keep generating past end-of-sequence (for benchmarks that need a fixed output length)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str | list):
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        problems = []
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens must be a positive integer (got {self.max_tokens!r})")
        if not 0.0 <= self.temperature <= 100.0:
            problems.append(f"temperature must be in [0, 100]; 0 is greedy (got {self.temperature!r})")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p!r})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop must be non-empty strings (got {self.stop!r})")
        if problems:
            raise ConfigError("invalid sampling parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The request's random generator (None when greedy); unseeded requests draw a fresh random seed."""
        if self.greedy:
            return None
        seed = self.seed if self.seed is not None else random.SystemRandom().randrange(2**63)
        return torch.Generator(device=device).manual_seed(seed)


def choose_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> torch.Tensor:
    """Next token per row from (B, vocab) logits; greedy rows take the argmax, the others sample.

    Each sampled row uses only its own generator, so its draw does not depend on what else is in the batch.
    """
    # The first maximum, as argmax gives it (torch.max is faster than argmax over a large vocabulary; lorakit's
    # kernel reads bf16 logits without widening them first).
    out = kernels.argmax(logits)
    if out is None:
        out = logits.max(dim=-1).indices
    for i, p in enumerate(params):
        if not p.greedy:
            out[i] = sample_row(logits[i], p.temperature, p.top_p, generators[i])
    return out


def sample_row(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token from softmax(logits / temperature), restricted to the top-p nucleus."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep a token if the mass before it is below top_p: the most likely token always survives.
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
