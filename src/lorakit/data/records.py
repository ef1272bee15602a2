"""The records task readers return: plain strings and ints, no tokens yet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lorakit.data.errors import DataError


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
    label: int | None
    """None for an unlabeled (test) example."""
    id: str | None = None
    """The example's index in its file, where the file gives one (GLUE's test files do)."""


def require_completions(pairs: Sequence[TextPair], source: str | Path) -> None:
    """Refuse generation records without a completion: a model trained on them learns to write nothing."""
    empty = sum(not p.completion.strip() for p in pairs)
    if empty == len(pairs):
        raise DataError(f"{source} has no references (completions): every record is an input only, as in E2E's "
                        "testset.csv, which has no 'ref' column. Train on data with references (trainset.csv, "
                        "devset.csv); score inputs-only files with lorakit eval")
    if empty:
        raise DataError(f"{source}: {empty} of {len(pairs)} records have an empty completion; fill or remove them")
