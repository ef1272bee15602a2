"""Records -> token ids with loss masks, and batches of them -> padded tensors.

A generation example is `prompt + completion + eos`; the loss is taken on the completion and the end token
only (labels are IGNORE_INDEX on the prompt), as the LoRA repo's GPT-2 E2E training masks the context
(paper Section 5.4).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from lorakit.data.errors import DataError
from lorakit.data.records import LabeledText, TextPair

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label that torch's cross-entropy skips (its default ignore_index)."""

PLAIN_SEPARATOR = " "
"""Put before a completion in plain (non-chat) mode, as the LoRA repo's encoder does (`encode(' ' + text)`):
byte-level BPEs spell a word that follows a space differently from one that starts the text."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One tokenized example. For generation, labels align with input_ids (IGNORE_INDEX where no loss);
    for classification, labels is [class index]."""

    input_ids: list[int]
    labels: list[int]
    token_type_ids: list[int] | None = None
    """Segment ids (0 for the first text, 1 for the second) where the tokenizer makes them (BERT-style pairs)."""


def tokenize_pairs(
    pairs: Sequence[TextPair], tokenizer: PreTrainedTokenizerBase, max_length: int, chat: bool = False
) -> list[Example]:
    """Tokenize prompt/completion pairs for causal-LM training with the loss on completion + eos only.

    input_ids = P + C + [eos] and labels = [IGNORE_INDEX] * len(P) + C + [eos], where
    - plain mode: P = the tokenizer's own leading special tokens (e.g. BOS) + tokens(prompt),
      C = tokens(PLAIN_SEPARATOR + completion) (nothing for an empty completion);
    - chat mode: P = tokens(chat template of the user turn, with the generation prompt), C = tokens of what
      the template appends for the assistant turn (the completion and its end-of-turn marker); eos is not
      added again when that already contains it.
    Longer examples lose prompt tokens from the left (keeping the leading special tokens); only when
    completion + eos alone leave less than half of max_length for the prompt is the completion cut from the
    right. Truncations are counted and logged as a warning.
    """
    if not pairs:
        raise DataError("no pairs to tokenize: the data is empty. Check the file and split you read.")
    _check_max_length(max_length, minimum=2)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token, so the model could not learn where completions end; "
                        "set tokenizer.eos_token (e.g. to its end-of-text token) first.")
    if chat:
        prompts, completions = _chat_texts(pairs, tokenizer)
        head: list[int] = []
    else:
        prompts = [p.prompt for p in pairs]
        completions = [PLAIN_SEPARATOR + p.completion if p.completion else "" for p in pairs]
        head = _special_prefix(tokenizer)
    prompt_ids = _encode(tokenizer, prompts)
    completion_ids = _encode(tokenizer, completions)
    examples, too_long, cut_prompt, cut_completion = [], 0, 0, 0
    for p, c in zip(prompt_ids, completion_ids, strict=True):
        p = head + p
        c = c if chat and eos in c else c + [eos]
        if len(p) + len(c) > max_length:
            too_long += 1
            # Keep at least half a window of prompt, so a long completion still sees what it answers.
            keep = min(len(p), max(max_length - len(c), max_length // 2))
            if keep < len(p):
                p = p[: len(head)] + p[len(p) - keep + len(head):] if keep > len(head) else p[:keep]
                cut_prompt += 1
            if len(p) + len(c) > max_length:
                c = c[: max_length - len(p)]
                cut_completion += 1
        examples.append(Example(input_ids=p + c, labels=[IGNORE_INDEX] * len(p) + c))
    if too_long:
        logger.warning(
            "%d of %d examples were longer than max_length=%d: %d lost the start of their prompt, %d the end "
            "of their completion; raise max_length to keep them whole.",
            too_long, len(pairs), max_length, cut_prompt, cut_completion,
        )
    return examples


def tokenize_labeled(
    texts: Sequence[LabeledText], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[Example]:
    """Tokenize classification examples with the tokenizer's own special tokens (e.g. [CLS] a [SEP] b [SEP]);
    labels = [label]. Longer inputs are cut to max_length (longest text first) and counted in a warning."""
    if not texts:
        raise DataError("no texts to tokenize: the data is empty. Check the file and split you read.")
    _check_max_length(max_length, minimum=1)
    firsts = [t.text for t in texts]
    seconds = [t.text_pair or "" for t in texts] if any(t.text_pair is not None for t in texts) else None
    encoded = tokenizer(firsts, seconds)
    ids, types = encoded["input_ids"], encoded.get("token_type_ids")
    long = [i for i, row in enumerate(ids) if len(row) > max_length]
    if long:
        cut = tokenizer([firsts[i] for i in long], None if seconds is None else [seconds[i] for i in long],
                        truncation=True, max_length=max_length)
        for k, i in enumerate(long):
            ids[i] = cut["input_ids"][k]
            if types is not None:
                types[i] = cut["token_type_ids"][k]
        logger.warning("%d of %d texts were longer than max_length=%d and were cut; raise max_length to keep "
                       "them whole.", len(long), len(texts), max_length)
    return [Example(input_ids=list(row), labels=[IGNORE_INDEX if t.label is None else t.label],
                    token_type_ids=None if types is None else list(types[i]))
            for i, (row, t) in enumerate(zip(ids, texts, strict=True))]


def collate(
    examples: Sequence[Example], pad_id: int, padding_side: Literal["right", "left"] = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch: input_ids and attention_mask are (B, T); labels are (B, T) padded with IGNORE_INDEX when
    every example has one label per token, else (B,) when every example has one label (classification).

    Left padding puts every sequence's last token in the last column, which batched generation needs.
    """
    if not examples:
        raise DataError("cannot collate an empty batch; give at least one example.")
    if padding_side not in ("right", "left"):
        raise DataError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
    width = max(len(e.input_ids) for e in examples)

    def pad(row: list[int], value: int) -> list[int]:
        fill = [value] * (width - len(row))
        return row + fill if padding_side == "right" else fill + row

    batch = {
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in examples], dtype=torch.long),
        "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0) for e in examples], dtype=torch.long),
    }
    if all(e.token_type_ids is not None for e in examples):
        batch["token_type_ids"] = torch.tensor([pad(e.token_type_ids, 0) for e in examples], dtype=torch.long)
    if all(len(e.labels) == len(e.input_ids) for e in examples):
        batch["labels"] = torch.tensor([pad(e.labels, IGNORE_INDEX) for e in examples], dtype=torch.long)
    elif all(len(e.labels) == 1 for e in examples):
        batch["labels"] = torch.tensor([e.labels[0] for e in examples], dtype=torch.long)
    else:
        raise DataError("cannot collate examples whose labels are neither one per token nor one per example; "
                        "do not mix tokenize_pairs and tokenize_labeled output in one batch.")
    return batch


def collate_packed(examples: Sequence[Example], row_tokens: int | None = None, pad_id: int = 0
                   ) -> dict[str, torch.Tensor]:
    """Token-labelled examples packed into rows of at most row_tokens tokens (default: twice the longest example)
    without padding between them: input_ids, labels and position_ids are (rows, width), tokens the count of real
    ones; positions restart at 0 for each example and there is no attention_mask.

    transformers reads restarting positions without an attention mask as packed sequences and masks attention
    block-diagonally, so each example attends only to itself and the batch computes what the padded batch computes,
    minus most of the padding. Rows rather than one long row: attention costs the square of a row's length. Examples
    go to rows first-fit by decreasing length (a row holds row_tokens, or the longest example if longer); rows
    shorter than the longest end in a padding segment of their own (positions from 0, labels IGNORE_INDEX). Each
    example's first label is IGNORE_INDEX: it would otherwise be scored from the previous example's last token (a
    padded batch never scores a row's first token either).
    """
    if not examples:
        raise DataError("cannot collate an empty batch; give at least one example.")
    if any(len(e.labels) != len(e.input_ids) for e in examples):
        raise DataError("packing needs one label per token (generation examples); classification examples are "
                        "collated padded: set train.batching to padded.")
    longest = max(len(e.input_ids) for e in examples)
    capacity = max(row_tokens or 2 * longest, longest)
    rows: list[list[Example]] = []
    room: list[int] = []
    for e in sorted(examples, key=lambda e: -len(e.input_ids)):
        slot = next((i for i, free in enumerate(room) if free >= len(e.input_ids)), None)
        if slot is None:
            rows.append([])
            room.append(capacity)
            slot = len(rows) - 1
        rows[slot].append(e)
        room[slot] -= len(e.input_ids)
    width = max(capacity - free for free in room)
    ids, labels, positions = [], [], []
    for row in rows:
        r_ids, r_labels, r_pos = [], [], []
        for e in row:
            r_ids += e.input_ids
            r_labels += [IGNORE_INDEX] + e.labels[1:]
            r_pos += range(len(e.input_ids))
        fill = width - len(r_ids)
        ids.append(r_ids + [pad_id] * fill)
        labels.append(r_labels + [IGNORE_INDEX] * fill)
        positions.append(r_pos + list(range(fill)))
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            "tokens": torch.tensor(sum(len(e.input_ids) for e in examples))}


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str | None = None) -> dict[str, Any]:
    """The tensors of a collated batch that the model's forward takes (not the labels), optionally moved. A packed
    batch also gets use_cache=False: transformers reads restarting positions as packed sequences only when it builds
    no KV cache."""
    inputs: dict[str, Any] = {k: batch[k] if device is None else batch[k].to(device)
                              for k in MODEL_INPUTS if k in batch}
    if "position_ids" in batch and "attention_mask" not in batch:
        inputs["use_cache"] = False
    return inputs


def _check_max_length(max_length: int, minimum: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < minimum:
        raise DataError(f"max_length must be an integer >= {minimum}, got {max_length!r}; "
                        "the model's context length (e.g. 512) is a common choice.")


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    # One batched call: fast tokenizers encode a list in parallel, about 10x faster than a Python loop.
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS for Llama, nothing for GPT-2); trailing ones,
    like an appended EOS, are left out because the completion follows the prompt."""
    bare = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(bare) + 1):
        if full[start: start + len(bare)] == bare:
            return list(full[:start])
    return []


def _chat_texts(pairs: Sequence[TextPair], tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], list[str]]:
    """(templated prompt, templated response) strings; the response is what the full conversation adds after
    the prompt, so it carries the template's end-of-turn marker."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("chat=True needs a tokenizer with a chat template; use an instruct model's "
                        "tokenizer, set tokenizer.chat_template, or pass chat=False.")
    prompts, responses = [], []
    for pair in pairs:
        user = [{"role": "user", "content": pair.prompt}]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": pair.completion}], tokenize=False
        )
        # Templates that rewrite earlier turns once an answer exists (e.g. dropping reasoning) break the
        # prefix property; then train on the bare completion after the generation prompt.
        prompts.append(prompt)
        responses.append(full[len(prompt):] if full.startswith(prompt) else pair.completion)
    return prompts, responses
