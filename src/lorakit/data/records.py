"""The records task readers return: plain strings and ints, no tokens yet."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextPair:
    """A generation example: the model reads `prompt` and learns to write `completion`.

    `group` is the key of records that share references: pairs with the same group are scored against each
    other's completions (for E2E it is the meaning representation; for instruction data, the instruction).
    """

    prompt: str
    completion: str
    group: str


@dataclass(frozen=True)
class LabeledText:
    """A classification example: one text (or a text pair, as in MRPC and RTE) and its class index."""

    text: str
    text_pair: str | None
    label: int
