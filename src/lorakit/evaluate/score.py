"""Scoring a model: the arg-max class of classifier outputs, and generated texts against grouped references."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from lorakit.data import DataError, Example, TextPair, collate, group_references, model_inputs
from lorakit.evaluate.decode import DecodeConfig, generate, prompt_ids
from lorakit.evaluate.metrics import e2e_metrics

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class GenerationResult:
    """One prediction per unique input (group), in first-seen input order, and the scores if references exist."""

    inputs: tuple[str, ...]
    predictions: tuple[str, ...]
    metrics: dict[str, float | None] | None
    """None when the split has no references (e.g. E2E's test CSV): there is nothing to score against."""


def classify(model: nn.Module, examples: Sequence[Example], pad_id: int, batch_size: int = 32) -> list[int]:
    """The arg-max class of each example under a sequence-classification model, in order."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions: list[int] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start: start + batch_size], pad_id)
            logits = model(**model_inputs(batch, device)).logits
            predictions += logits.argmax(-1).tolist()
    model.train(was_training)
    return predictions


def evaluate_generation(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[TextPair],
    decode: DecodeConfig | None = None, chat: bool = False, progress: bool = True,
) -> GenerationResult:
    """Decode each unique input once (pairs sharing a group are one input with several references) and score
    the texts with the five E2E metrics; metrics is None when no input has a reference. decode defaults to the
    paper's E2E settings (DecodeConfig())."""
    decode = decode or DecodeConfig()
    inputs, _ = distinct_inputs(pairs)
    ids = prompt_ids(inputs, tokenizer, decode.max_prompt_length, chat=chat)
    predictions = generate(model, tokenizer, ids, decode, progress=progress)
    return score_predictions(pairs, predictions)


def distinct_inputs(pairs: Sequence[TextPair]) -> tuple[list[str], list[list[str]]]:
    """(prompts, references) of each distinct input in first-seen order: pairs sharing a group are one input whose
    references are all their completions. The order eval decodes and writes predictions.txt in."""
    groups = group_references(pairs)
    prompt_of: dict[str, str] = {}
    for pair in pairs:
        prompt_of.setdefault(pair.group, pair.prompt)
    return [prompt_of[group] for group, _ in groups], [refs for _, refs in groups]


def score_predictions(pairs: Sequence[TextPair], predictions: Sequence[str]) -> GenerationResult:
    """Score texts already generated, one per unique input of `pairs` in first-seen order (the order eval writes
    predictions.txt in), with the five E2E metrics; a count mismatch is an error naming both counts."""
    groups = group_references(pairs)
    if len(predictions) != len(groups):
        raise DataError(f"got {len(predictions)} predictions for {len(groups)} distinct inputs; give one line per "
                        "distinct input, in the data's order (as lorakit eval writes predictions.txt)")
    references = [refs for _, refs in groups]
    metrics = e2e_metrics(list(predictions), references) if any(references) else None
    return GenerationResult(tuple(g for g, _ in groups), tuple(predictions), metrics)


