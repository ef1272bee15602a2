"""Beam search computes each prompt once and repeats its cache for the beams: the texts equal transformers' own
generate() on the same left-padded batch, for Llama and GPT-2, and prefix methods keep the plain path."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_gpt2, tiny_llama, tiny_tokenizer

from lorakit.core.config import LoraConfig
from lorakit.evaluate.decode import DecodeConfig, _prompt_cache, generate
from lorakit.methods import METHODS, MethodOptions

PROMPTS = [[5, 9, 17, 4, 30, 2 + 40], [7, 8], [11, 12, 13, 14], [50, 60, 70, 80, 90, 100, 110, 120]]


def plain_generate(model, tokenizer, prompts, config):
    """transformers' generate on the left-padded batch, as decode.generate pads it (longest prompt first)."""
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in order])
    mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in order])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, num_beams=config.beams,
                             length_penalty=config.length_penalty, no_repeat_ngram_size=config.no_repeat_ngram_size,
                             max_new_tokens=config.max_new_tokens, do_sample=False, early_stopping=True,
                             pad_token_id=pad, use_cache=True)
    texts = [""] * len(prompts)
    for i, row in zip(order, out[:, width:].tolist(), strict=True):
        texts[i] = " ".join(tokenizer.decode(row, skip_special_tokens=True).split())
    return texts


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_beam_search_from_the_shared_prompt_cache_equals_plain_generate(make):
    model, tokenizer = make().eval(), tiny_tokenizer()
    model.generation_config.eos_token_id = None  # random weights: decode the whole budget
    config = DecodeConfig(beams=4, max_new_tokens=10, batch_size=4)
    got = generate(model, tokenizer, PROMPTS, config, progress=False)
    assert got == plain_generate(model, tokenizer, PROMPTS, config)
    assert sum(len(t.split()) for t in got) > 20  # something was decoded (special tokens are dropped)


def test_prefix_methods_and_greedy_decoding_keep_the_plain_path():
    ids, mask = torch.tensor([[3, 5, 6], [7, 8, 9]]), torch.ones(2, 3, dtype=torch.long)
    assert "cache" in _prompt_cache(tiny_llama().eval(), ids, mask, beams=4)
    assert _prompt_cache(tiny_llama().eval(), ids, mask, beams=1) == {}
    prefixed = tiny_llama()
    METHODS["prefix-layer"].prepare(prefixed, LoraConfig(), MethodOptions(prefix_length=2))
    assert _prompt_cache(prefixed.eval(), ids, mask, beams=4) == {}
    config = DecodeConfig(beams=3, max_new_tokens=5)
    assert generate(prefixed, tiny_tokenizer(), PROMPTS, config, progress=False) == plain_generate(
        prefixed, tiny_tokenizer(), PROMPTS, config)
