"""Prefix methods: logits keep the input's shape, PreLayer starts as the base model reading real tokens, cached
decoding equals uncached decoding, and PEFT reads our prompt-tuning files with the same logits."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_bert, tiny_gpt2, tiny_llama

from lorakit.core.config import LoraConfig
from lorakit.methods import METHODS, MethodOptions
from lorakit.methods.prefix import ATTRIBUTE

PREFIX = 4


def prepare(model, name: str, seed: int = 5):
    torch.manual_seed(seed)
    METHODS[name].prepare(model, LoraConfig(), MethodOptions(prefix_length=PREFIX))
    return model


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_prefix_layer_starts_as_the_base_model_reading_the_init_tokens(make, ids):
    base = make()
    model = prepare(make(), "prefix-layer")
    torch.manual_seed(5)
    init_ids = torch.randint(0, 128, (1, PREFIX))
    expected = base(input_ids=torch.cat([init_ids.expand(ids.shape[0], -1), ids], dim=1)).logits[:, PREFIX:]
    torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["prefix-embed", "prefix-layer", "prompt-tuning"])
def test_logits_keep_the_inputs_shape(name, ids):
    model = prepare(tiny_llama(), name)
    mask = torch.ones_like(ids)
    assert model(input_ids=ids, attention_mask=mask).logits.shape == (*ids.shape, 128)
    assert prepare(tiny_bert(), name)(input_ids=ids, attention_mask=mask).logits.shape == (ids.shape[0], 3)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("name", ["prefix-layer", "prompt-tuning"])
def test_cached_decoding_equals_decoding_without_a_cache(make, name):
    model = prepare(make(), name)
    prompt = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    kw = {"input_ids": prompt, "attention_mask": mask, "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert torch.equal(model.generate(**kw, use_cache=True), model.generate(**kw, use_cache=False))


def test_peft_loads_our_prompt_tuning_files_with_identical_logits(ids, tmp_path):
    peft = pytest.importorskip("peft")
    model = prepare(tiny_llama(), "prompt-tuning")
    export = METHODS["prompt-tuning"].prepare(tiny_llama(), LoraConfig(), MethodOptions(prefix_length=PREFIX))
    with torch.no_grad():
        getattr(model, ATTRIBUTE).activations.add_(0.3)
    export.write(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path)).eval()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits[:, PREFIX:]
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected)
