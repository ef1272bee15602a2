"""What the engine asks of a forward: prefill prompt chunks, decode, release. Two implementations: the lean bf16 Llama
forward (llama.LeanBackend) and the transformers forward for any model (hf.TransformersBackend)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch


class Row(Protocol):
    """What a backend reads of a request (engine.Request is one)."""

    prompt: list[int]
    output: list[int]
    """The tokens generated so far; a decode step continues after the last."""
    key: str | None
    """The adapter's name on the model (None: the base model)."""


class Chunk(NamedTuple):
    """Prompt tokens [start, end) of a row to prefill; the backend holds the row's first `start` tokens (none when
    start is 0: a new row). The chunk that ends the prompt makes the row a decoding one."""

    row: Row
    start: int
    end: int
    every: bool = False
    """Return the logits at every position of the chunk, not only its last (for prompt logprobs)."""


class Backend(Protocol):
    """The forward passes under the engine. A backend holds each row's KV cache from its first chunk until its
    release; only the engine's thread calls it. A prefill or decode that raises leaves every row's cache as it
    was, so the engine may retry without the row that caused it."""

    name: str
    """How `lorakit serve` names this forward."""
    decode_in_prefill: bool
    """Whether `prefill` takes decoding rows along (`carried`), each continuing with its last token: their decode
    step then runs in the prefill's pass over the weights."""
    padded: bool
    """Whether a prefill pass costs its number of chunks times the longest (left-padded) rather than their sum."""

    def check(self, key: str) -> None:
        """Raise AdapterError if this forward cannot apply adapter `key` (before a request using it starts)."""

    def prefill(self, chunks: Sequence[Chunk], carried: Sequence[Row] = ()
                ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """(len(carried) + len(chunks), vocab) logits of the next token after each carried row's last output token
        (only where decode_in_prefill) and after each chunk's last token; and per chunk, where `every`, the
        (end - start, vocab) logits after each of its tokens (else None)."""

    def decode(self, rows: Sequence[Row]) -> torch.Tensor:
        """(len(rows), vocab) logits of each decoding row's next token, after its last output token; `rows` are all
        the decoding rows the backend holds."""

    def probe(self, row: Row, chunk: Chunk | None = None) -> None:
        """Run one row's part of a pass that raised on its own, changing no cache: its chunk, or (None) its decode
        step; raises what that raises (the engine's search for the request that made a pass fail)."""

    def release(self, rows: Sequence[Row]) -> None:
        """Forget these rows' caches (finished or cancelled requests, decoding or part-prefilled)."""

    def reset(self) -> None:
        """Forget every row."""
