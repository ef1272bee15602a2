"""Batched beam-search decoding with a KV cache (transformers' `generate` over left-padded batches).

The defaults are the LoRA paper's E2E decoding (Hu et al., 2021, Appendix D.3, Table 11): beam 10, length
penalty 0.9, no repeated 4-grams, at most 64 new tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from lorakit.data import IGNORE_INDEX, TextPair, tokenize_pairs
from lorakit.evaluate.config import DecodeConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def prompt_ids(
    prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int, chat: bool = False
) -> list[list[int]]:
    """Token ids of each prompt exactly as training formats it (the part tokenize_pairs masks from the loss)."""
    pairs = [TextPair(prompt=p, completion="", group=p) for p in prompts]
    # max_length + 1 leaves room for the end token tokenize_pairs appends to the (empty) completion.
    examples = tokenize_pairs(pairs, tokenizer, max_length + 1, chat=chat)
    return [[t for t, label in zip(e.input_ids, e.labels, strict=True) if label == IGNORE_INDEX] for e in examples]


def generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
    config: DecodeConfig | None = None, progress: bool = True,
) -> list[str]:
    """Generate one text per prompt (token ids), returned stripped, on one line, in the prompts' order.

    Prompts are decoded longest first so each batch holds similar lengths and little padding. config defaults to
    the paper's E2E decoding (DecodeConfig()).
    """
    config = config or DecodeConfig()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    model.eval()
    batches = range(0, len(order), config.batch_size)
    for start in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        rows = order[start: start + config.batch_size]
        width = max(len(prompts[i]) for i in rows)
        # Left padding puts every prompt's last token in the last column, where generation continues.
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + list(prompts[i]) for i in rows], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in rows], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, num_beams=config.beams, length_penalty=config.length_penalty,
                no_repeat_ngram_size=config.no_repeat_ngram_size, max_new_tokens=config.max_new_tokens,
                do_sample=False, early_stopping=config.beams > 1, pad_token_id=pad, use_cache=True,
                **_prompt_cache(model, ids, mask, config.beams),
            )
        for i, row in zip(rows, out[:, width:].tolist(), strict=True):
            texts[i] = " ".join(tokenizer.decode(row, skip_special_tokens=True).split())
    return texts


def _prompt_cache(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, beams: int) -> dict:
    """{"cache": the prompts' keys and values but the last token's, computed once and repeated for each beam}, or {}
    where that does not apply.

    generate() repeats every prompt `beams` times before its first forward, so the prompt would be computed once
    per beam (10x on E2E, about a tenth of all decoding time there). Given this cache, generate() runs only the
    last prompt token and the new ones. Positions follow generate's own rule (the count of real tokens before).
    Models whose forward has a pre-hook (a prefix method adds positions there, which a cache computed without
    the hook would miss), and one-token prompts, keep the plain path.
    """
    from transformers import DynamicCache

    if beams < 2 or ids.shape[1] < 2 or model._forward_pre_hooks:
        return {}
    cache = DynamicCache()
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], cache=cache,
          use_cache=True)
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(beams, dim=0)
        layer.values = layer.values.repeat_interleave(beams, dim=0)
    return {"cache": cache}
