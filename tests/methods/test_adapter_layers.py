"""Adapter^H / Adapter^L: the model starts exactly at the base output, only adapters train, and a saved method
loads back onto a fresh base with identical outputs."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_bert, tiny_gpt2, tiny_llama

from lorakit.core.config import LoraConfig
from lorakit.methods import METHODS, MethodOptions, load_method
from lorakit.methods.adapters import Bottleneck
from lorakit.train.config import RunConfig

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}


def perturb(model: torch.nn.Module, seed: int = 3) -> None:
    """Give every trainable parameter a random nudge, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", ["adapter-h", "adapter-l"])
def test_adapters_start_exactly_at_the_base_output(kind, name, ids):
    model = MODELS[kind]()
    before = model(input_ids=ids).logits
    METHODS[name].prepare(model, LoraConfig(), MethodOptions(bottleneck=4))
    assert torch.equal(model(input_ids=ids).logits, before)


@pytest.mark.parametrize("name, per_block", [("adapter-h", 2), ("adapter-l", 1)])
def test_adapters_sit_after_attention_and_mlp_per_design(name, per_block):
    model = tiny_llama()
    METHODS[name].prepare(model, LoraConfig(), MethodOptions(bottleneck=4))
    places = [n for n, m in model.named_modules() if isinstance(m, Bottleneck)]
    assert len(places) == 2 * per_block
    assert any("mlp.down_proj" in p for p in places)
    assert any("self_attn.o_proj" in p for p in places) == (per_block == 2)


def test_only_adapters_norms_and_head_train(ids):
    model = tiny_bert()
    METHODS["adapter-h"].prepare(model, LoraConfig(), MethodOptions(bottleneck=4))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lorakit_adapter" in n or "LayerNorm" in n or n.startswith("classifier") for n in trained)
    assert any(n.startswith("classifier") for n in trained)


def test_an_adapter_changes_the_output_once_trained(ids):
    model = tiny_gpt2()
    before = model(input_ids=ids).logits
    METHODS["adapter-l"].prepare(model, LoraConfig(), MethodOptions(bottleneck=4))
    perturb(model)
    assert not torch.allclose(model(input_ids=ids).logits, before)


@pytest.mark.parametrize("name", ["adapter-h", "adapter-l", "bitfit", "ft-top2", "prefix-layer", "prefix-embed",
                                  "prompt-tuning", "dora", "lora", "rslora", "lora+prefix"])
def test_saved_methods_load_onto_a_fresh_base_with_identical_outputs(name, ids, tmp_path):
    model = tiny_gpt2()
    config = RunConfig(lora=LoraConfig(targets=("c_attn",)),
                       method_options=MethodOptions(bottleneck=4, prefix_length=3))
    export = METHODS[name].prepare(model, config.lora, config.method_options)
    perturb(model)
    expected = model(input_ids=ids).logits
    export.write(model, tmp_path)
    fresh = tiny_gpt2()
    info = load_method(fresh, tmp_path)
    assert info["method"] == name
    assert torch.equal(fresh(input_ids=ids).logits, expected)
    assert not any(p.requires_grad for p in fresh.parameters())
