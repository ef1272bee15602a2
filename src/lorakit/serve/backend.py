"""What the engine asks of a forward: prefill, decode, release. Two implementations: the lean bf16 Llama forward
(llama.LeanBackend) and the transformers forward for any model (hf.TransformersBackend)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class Row(Protocol):
    """What a backend reads of a request (engine.Request is one)."""

    prompt: list[int]
    output: list[int]
    """The tokens generated so far; a decode step continues after the last."""
    key: str | None
    """The adapter's name on the model (None: the base model)."""


class Backend(Protocol):
    """The forward passes under the engine. A backend holds each row's KV cache from its prefill until its release;
    only the engine's thread calls it."""

    name: str
    """How `lorakit serve` names this forward."""
    decode_in_prefill: bool
    """Whether `prefill` takes running rows along, each continuing with its last token: their decode step then
    runs in the newcomers' pass over the weights."""

    def check(self, key: str) -> None:
        """Raise AdapterError if this forward cannot apply adapter `key` (before a request using it starts)."""

    def prefill(self, rows: Sequence[Row]) -> torch.Tensor:
        """(len(rows), vocab) logits of each row's next token: a row not held yet is prefilled with its prompt; a
        held one (only where decode_in_prefill) continues with its last output token."""

    def decode(self, rows: Sequence[Row]) -> torch.Tensor:
        """(len(rows), vocab) logits of each held row's next token, after its last output token."""

    def release(self, rows: Sequence[Row]) -> None:
        """Forget these rows' caches (finished or cancelled requests)."""

    def reset(self) -> None:
        """Forget every row (after a failed step)."""
