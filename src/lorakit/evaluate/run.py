"""Scoring a model on a task: GLUE classification metrics, and E2E-style generation against grouped references."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lorakit.core.errors import ConfigError
from lorakit.core.io import atomic_write
from lorakit.data import DataError, Example, TextPair, collate, group_references, model_inputs
from lorakit.evaluate.decode import DecodeConfig, generate, prompt_ids
from lorakit.evaluate.metrics import accuracy, e2e_metrics, f1, matthews_corrcoef

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


def glue_scores(predictions: Sequence[int], labels: Sequence[int], task: str) -> dict[str, float]:
    """accuracy for every task, plus F1 for MRPC and Matthews correlation for CoLA (fractions, as sklearn)."""
    scores = {"accuracy": accuracy(predictions, labels)}
    if task.lower() == "mrpc":
        scores["f1"] = f1(predictions, labels)
    if task.lower() == "cola":
        scores["matthews_corrcoef"] = matthews_corrcoef(predictions, labels)
    return scores


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


def load_trained(
    model: str, adapter: str | Path | None, kind: str, num_labels: int | None, device: str = "auto",
    precision: str = "fp32",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A base model (built-in name or directory, e.g. a full fine-tune's) with an optional adapter on it, in eval
    mode on `device`.

    `adapter` is a LoRA directory (PEFT format) or a lorakit method's (lorakit_method.json: adapters, prefixes,
    BitFit, DoRA, ...; see load_weights). LoRA is merged (exact to fp32 rounding) so scoring runs at the base
    model's speed. precision "bf16" then casts every weight, the method's included, to bfloat16, about 1.7x faster
    on hardware with native bf16 and slightly different in the last bits; "auto" picks bf16 where it is native
    (lorakit.train.loop.uses_bf16), else fp32.
    """
    from lorakit.models import load, resolve_device
    from lorakit.train.loop import uses_bf16

    if precision not in ("fp32", "bf16", "auto"):
        raise ConfigError(f"precision must be fp32, bf16 or auto, got {precision!r}")
    base, tokenizer = load(model, kind=kind, num_labels=num_labels)
    if adapter is not None:
        load_weights(base, adapter)
    where = resolve_device(device)
    base = base.to(where)
    if uses_bf16(precision, where):
        base = base.to(torch.bfloat16)
    return base.eval(), tokenizer


MERGEABLE = ("lora", "rslora", "pissa", "dora", "lora+prefix")
"""Methods whose trained update core's merge folds into W: a LoRA ΔW (lora+prefix: its LoRA part), or DoRA's
m ⊙ (W + ΔW)/‖W + ΔW‖. Adapters and prefixes add modules, which stay."""


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Put a trained adapter directory onto `model` (a fresh base) in place: a lorakit method's through
    lorakit.methods.load_method, merging the LoRA family's ΔW where merge is defined (MERGEABLE); any other
    directory as a PEFT LoRA adapter, merged."""
    from lorakit.core.io import load_adapter
    from lorakit.core.merge import merge
    from lorakit.core.state import state_of
    from lorakit.methods import load_method
    from lorakit.methods.files import METHOD_FILE

    if (Path(directory) / METHOD_FILE).is_file():
        if load_method(model, directory)["method"] in MERGEABLE:
            merge(model, state_of(model).active)
    else:
        merge(model, load_adapter(model, directory))


def format_table(metrics: dict[str, float | None]) -> str:
    """Metrics as an aligned two-column table; None prints as 'n/a'."""
    width = max(len(k) for k in metrics)
    rows = [f"{'metric':<{width}}  value", f"{'-' * width}  -------"]
    rows += [f"{k:<{width}}  {'n/a' if v is None else f'{v:.4f}'}" for k, v in metrics.items()]
    return "\n".join(rows)


def write_lines(path: str | Path, lines: Sequence[str]) -> None:
    """One text per line, written atomically."""
    atomic_write(Path(path), "".join(line.replace("\n", " ") + "\n" for line in lines).encode())


def write_metrics(path: str | Path, metrics: dict) -> None:
    """metrics.json, written atomically."""
    atomic_write(Path(path), (json.dumps(metrics, indent=2) + "\n").encode())
