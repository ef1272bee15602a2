"""Layer invariants: zero B is exactly the base, the LoRA path equals its explicit formula, fused slices."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import randomize, tiny_bert, tiny_gpt2, tiny_llama
from torch import nn

import lorakit
from lorakit import LoraConfig
from lorakit.core.merge import delta_weight


@pytest.mark.parametrize(
    "make,config",
    [
        (tiny_llama, LoraConfig(rank=4, alpha=8, targets="all-linear")),
        (tiny_llama, LoraConfig(rank=2, alpha=4, targets=("embed_tokens", "q_proj"))),
        (tiny_gpt2, LoraConfig(rank=4, alpha=8, targets=("c_attn", "c_fc"), slices={"c_attn": (True, False, True)})),
        (tiny_bert, LoraConfig(rank=4, alpha=8, targets=("query", "value", "word_embeddings"))),
    ],
)
def test_zero_initialized_b_gives_exactly_the_base_output(make, config, ids):
    model = make()
    with torch.no_grad():
        before = model(ids).logits
        lorakit.inject(model, config)
        after = model(ids).logits
    assert torch.equal(before, after)


def test_linear_lora_equals_its_formula():
    lin = nn.Linear(6, 5)
    model = nn.Sequential(lin)
    lorakit.inject(model, LoraConfig(rank=3, alpha=6, targets=("0",)))
    randomize(model)
    x = torch.randn(4, 6)
    w = model[0]
    expect = lin(x) + (6 / 3) * x @ w.lora_A["default"].T @ w.lora_B["default"].T
    assert torch.allclose(model(x), expect, atol=1e-6)


def test_rslora_scales_by_alpha_over_root_rank():
    assert LoraConfig(rank=16, alpha=8, rslora=True).scaling == pytest.approx(8 / math.sqrt(16))
    assert LoraConfig(rank=16, alpha=8).scaling == pytest.approx(0.5)


def test_kaiming_and_gaussian_initialize_a_and_zero_b():
    model = nn.Sequential(nn.Linear(64, 64))
    lorakit.inject(model, LoraConfig(rank=8, targets=("0",)), "k")
    lorakit.inject(model, LoraConfig(rank=8, targets=("0",), init="gaussian"), "g")
    layer = model[0]
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=√5) on fan_in 64 gives U(-1/√64, 1/√64)
    assert layer.lora_A["k"].abs().max() <= bound
    assert layer.lora_A["g"].std().item() == pytest.approx(1 / 8, rel=0.15)
    assert not layer.lora_B["k"].any() and not layer.lora_B["g"].any()


def test_embedding_initialization_is_reversed():
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4, targets=("embed_tokens",)))
    emb = model.model.embed_tokens
    assert not emb.lora_A["default"].any() and emb.lora_B["default"].std() > 0.5


def test_dropout_touches_only_the_lora_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16))
    lorakit.inject(model, LoraConfig(rank=4, targets=("0",), dropout=0.5))
    x = torch.randn(8, 16)
    model.train()
    assert torch.equal(model(x), model[0].base_layer(x))  # B = 0: dropout cannot leak into the base path
    randomize(model)
    assert not torch.equal(model(x), model(x))  # training: the LoRA path is dropped at random
    model.eval()
    assert torch.equal(model(x), model(x))


def test_fused_qv_slices_equal_an_unfused_reference(ids):
    """GPT-2 c_attn adapted on q and v only equals separate q/v LoRA computed by hand (loralib's MergedLinear)."""
    model = tiny_gpt2()
    lorakit.inject(model, LoraConfig(rank=2, alpha=4, targets=("c_attn",), slices={"c_attn": (True, False, True)}))
    randomize(model)
    layer = model.transformer.h[0].attn.c_attn
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    d = 32
    x = torch.randn(5, d)
    base = layer.base_layer(x)
    q = x @ a[:2].T @ b[:d].T * 2
    v = x @ a[2:].T @ b[d:].T * 2
    expect = base + torch.cat([q, torch.zeros_like(q), v], dim=1)
    assert torch.allclose(layer(x), expect, atol=1e-6)
    dw = delta_weight(layer, "default")  # Conv1D stores (in, out): k columns untouched
    assert not dw[:, d : 2 * d].any() and dw[:, :d].any() and dw[:, 2 * d :].any()


def test_conv2d_lora_equals_the_merged_convolution():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    lorakit.inject(model, LoraConfig(rank=2, alpha=2, targets=("0",)))
    randomize(model)
    x = torch.randn(2, 3, 6, 6)
    layer = model[0]
    w = layer.base_layer.weight + delta_weight(layer, "default").view_as(layer.base_layer.weight)
    expect = nn.functional.conv2d(x, w, layer.base_layer.bias, padding=1)
    assert torch.allclose(model(x), expect, atol=1e-5)


def test_lora_gradients_reach_only_the_adapter(ids):
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4))
    randomize(model)
    model(ids, labels=ids).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n for n in grads)


def test_lora_trains_under_bf16_autocast(ids):
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4, targets="all-linear"))
    randomize(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".lora_" in n)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert (model(ids).logits.float() - model.float()(ids).logits).abs().max() < 0.5
