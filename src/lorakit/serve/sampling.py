"""Choosing each row's next token (greedy, or temperature + nucleus (top-p) sampling with a per-request seed), and
the log-probabilities a request asks to see."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

import torch

from lorakit.core.errors import ConfigError
from lorakit.serve import kernels

MAX_LOGPROBS = 20  # most alternatives a request may ask for per position (OpenAI's chat top_logprobs limit)
SEEDS = 2**64  # seeds are in [0, SEEDS): what torch.Generator.manual_seed takes


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
    logprobs: int | None = None
    """None: off; k: each generated token's log-probability and the k most likely tokens' (see TokenLogprob)."""
    prompt_logprobs: int | None = None
    """The same for every prompt token after the first (OpenAI's `echo` with `logprobs`)."""

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
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < SEEDS):
            problems.append(f"seed must be an integer in [0, 2**64) (got {self.seed!r})")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_LOGPROBS):
                problems.append(f"{name} must be an integer in [0, {MAX_LOGPROBS}] or None (got {k!r})")
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
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
    failed: dict[int, Exception] | None = None,
) -> torch.Tensor:
    """Next token per row from (B, vocab) logits; greedy rows take the argmax, the others sample.

    Each sampled row uses only its own generator, so its draw does not depend on what else is in the batch. With
    `failed`, a row whose sampling raises (non-finite probabilities) is recorded there, its token -1, and the
    other rows still get theirs.
    """
    # The first maximum, as argmax gives it (torch.max is faster than argmax over a large vocabulary; lorakit's
    # kernel reads bf16 logits without widening them first).
    out = kernels.argmax(logits)
    if out is None:
        out = logits.max(dim=-1).indices
    for i, p in enumerate(params):
        if not p.greedy:
            try:
                out[i] = sample_row(logits[i], p.temperature, p.top_p, generators[i])
            except RuntimeError as e:
                if failed is None:
                    raise
                failed[i] = e
                out[i] = -1
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


class TokenLogprob(NamedTuple):
    """A token's log-probability under the model (log_softmax of its raw logits, before temperature and top_p, as
    OpenAI reports them) and the `top` most likely tokens with theirs, most likely first (ties: lower id first,
    so a greedy choice is top[0])."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, tokens: list[int], k: int) -> list[TokenLogprob]:
    """For each row of (n, vocab) raw logits: the log-probability of tokens[row] and the k most likely tokens'."""
    out: list[TokenLogprob] = []
    for i in range(0, logits.shape[0], 64):  # in slices: (n, vocab) fp32 and int64 copies of a long prompt's logits
        lp = torch.log_softmax(logits[i : i + 64].float(), dim=-1)
        picked = lp.gather(1, torch.tensor(tokens[i : i + 64])[:, None])[:, 0].tolist()
        if k:
            ids = top_tokens(lp, k)
            tops = [list(zip(r, v, strict=True)) for r, v in zip(ids.tolist(), lp.gather(1, ids).tolist(), strict=True)]
        else:
            tops = [[] for _ in picked]
        out += [TokenLogprob(t, p, top) for t, p, top in zip(tokens[i : i + 64], picked, tops, strict=True)]
    return out


def top_tokens(x: torch.Tensor, k: int) -> torch.Tensor:
    """(n, k) ids of each row's k largest fp32 values, largest first, equal values by lower id (as argmax picks).

    topk alone orders ties arbitrarily; here each value becomes one int64 key, its float bits mapped to integers
    in the floats' order, then the id (inverted: lower ids win) in the low bits, so that every key is distinct."""
    bits = (x + 0.0).contiguous().view(torch.int32).long()  # + 0.0: -0.0 becomes 0.0, which argmax finds equal
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats' bits count down as values fall
    low = 2**31  # room for any vocabulary's ids
    keys = ordered * low + (low - 1 - torch.arange(x.shape[-1]))
    return keys.topk(min(k, x.shape[-1]), dim=-1).indices
