"""A request inside the engine: what it asked for, its output so far, and the events it sends."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lorakit.serve.sampling import SamplingParams, TokenLogprob, token_logprobs
from lorakit.serve.text import TextStream


@dataclass
class Event:
    """What one request produced since its last event; `finish_reason` is set on its last event."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    """"stop" (end-of-sequence or a stop string), "length" (max_tokens or the context), "cancelled", "error"."""
    error: str | None = None
    """What went wrong, for the user, when finish_reason is "error"."""
    status: int | None = None
    """With an error: 400 or 404 when the request is at fault (its adapter cannot be loaded or run, or was unloaded
    before it started; its seed), 503 when the server is shutting down, 500 otherwise."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    """Parallel to token_ids when the request asked for logprobs."""
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """On the request's first event when it asked for prompt_logprobs: one per prompt token, the first None."""


@dataclass(eq=False)
class Request:
    """One request: its prompt, adapter, sampling state and output so far."""

    id: int
    prompt: list[int]
    adapter: str | None
    """Public adapter name, or None for the base model."""
    params: SamplingParams
    on_event: Callable[[Event], None]
    stream: TextStream
    key: str | None = None
    """The adapter's name on the model while the request runs (a versioned pool key)."""
    output: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    cancelled: bool = False
    finished: bool = False
    submitted: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    prefilled: int = 0
    """Prompt tokens in the backend's cache (the request is running once all are)."""
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """Built while the prompt is prefilled, when params.prompt_logprobs asks for them."""

    def take(self, token: int, eos: set[int], max_context: int) -> tuple[str, str | None]:
        """Append the next token: (the text it completes, the finish reason when it ends the request)."""
        self.output.append(token)
        if token in eos and not self.params.ignore_eos:
            return self.stream.finish(), "stop"
        text = self.stream.add(token)
        if self.stream.stopped:
            return text, "stop"
        if len(self.output) >= self.params.max_tokens or len(self.prompt) + len(self.output) >= max_context:
            text += self.stream.finish()  # the flushed tail may still complete a stop string
            return text, "stop" if self.stream.stopped else "length"
        return text, None

    def add_prompt_logprobs(self, start: int, end: int, logits: torch.Tensor) -> None:
        """Prompt logprobs from the (end - start, vocab) logits after prompt tokens start .. end - 1: each gives the
        next prompt token's (the last prompt token's give the first generated token)."""
        if self.prompt_logprobs is None:
            self.prompt_logprobs = [None]
        n = min(end, len(self.prompt) - 1) - start
        if n > 0:
            self.prompt_logprobs += token_logprobs(logits[:n], self.prompt[start + 1 : start + 1 + n],
                                                   self.params.prompt_logprobs)


def logprobs_of(rows: list[Request], logits: torch.Tensor, tokens: list[int]) -> dict[int, TokenLogprob]:
    """Row index -> its chosen token's logprobs, for the rows that ask, those asking for k alternatives at once."""
    by_k: dict[int, list[int]] = {}
    for i, seq in enumerate(rows):
        if seq.params.logprobs is not None:
            by_k.setdefault(seq.params.logprobs, []).append(i)
    out: dict[int, TokenLogprob] = {}
    for k, index in by_k.items():
        found = token_logprobs(logits[torch.tensor(index)], [tokens[i] for i in index], k)
        out.update(zip(index, found, strict=True))
    return out
