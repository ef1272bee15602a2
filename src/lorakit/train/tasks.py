"""From a DataConfig to tokenized examples and the task's metric hook, through lorakit.data's readers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.data import (
    Example,
    glue_task,
    read_e2e,
    read_glue,
    read_instruct,
    read_jsonl,
    require_completions,
    tokenize_labeled,
    tokenize_pairs,
)
from lorakit.train.config import DataConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lorakit.train.loop import Evaluate


def model_kind(data: DataConfig) -> tuple[str, int | None]:
    """(kind for lorakit.models.load, num_labels): a classifier for GLUE, a causal LM otherwise."""
    if data.task == "glue":
        return "seq-cls", glue_task(data.glue_task or "").num_labels
    return "causal-lm", None


def read_split(data: DataConfig, split: str) -> list | None:
    """The records of 'train' or 'dev' (TextPair or LabeledText), cut to the configured limit; None if absent.
    Generation records without a completion are refused: there is nothing to learn or to compute a loss on."""
    path = data.train if split == "train" else data.dev
    limit = data.train_limit if split == "train" else data.dev_limit
    if path is None:
        # e2e and glue find the dev split beside the training data; instruct and jsonl read one file.
        if data.task not in ("e2e", "glue") or not Path(data.train).is_dir():
            return None
        path = data.train
    given_split = split if Path(path).is_dir() else None
    if data.task == "e2e":
        records = read_e2e(path, split=given_split)
    elif data.task == "glue":
        records = read_glue(data.glue_task or "", path, split=given_split)
    elif data.task == "instruct":
        records = read_instruct(path)
    else:
        records = read_jsonl(path)
    records = records[:limit] if limit else records
    if data.task != "glue":
        require_completions(records, path)
    return records


def tokenize(data: DataConfig, records: list, tokenizer: PreTrainedTokenizerBase) -> list[Example]:
    """Token ids with loss masks: the chat template for instruct (loss on the answer only), plain text otherwise."""
    if data.task == "glue":
        return tokenize_labeled(records, tokenizer, data.max_length)
    return tokenize_pairs(records, tokenizer, data.max_length, chat=data.task == "instruct")


def metric_hook(data: DataConfig, dev_examples: list[Example] | None, pad_id: int) -> Evaluate | None:
    """GLUE's metrics on the dev set at each evaluation (cheap: one forward). Generation tasks report dev loss
    only during training, since beam search over a dev set takes far longer than the steps between
    evaluations; `lorakit eval` scores them afterwards."""
    if data.task != "glue" or not dev_examples:
        return None
    from lorakit.evaluate.run import classify, glue_scores

    labels = [e.labels[0] for e in dev_examples]
    return lambda model: glue_scores(classify(model, dev_examples, pad_id), labels, data.glue_task or "")

