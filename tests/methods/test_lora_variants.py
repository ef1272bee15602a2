"""LoRA variants: DoRA computes m ⊙ (W + ΔW)/‖W + ΔW‖_row and starts at the base output; rsLoRA scales by
alpha/√r; PiSSA starts at the base output."""

from __future__ import annotations

import math

import torch
from tiny import randomize, tiny_gpt2, tiny_llama

from lorakit.core.config import LoraConfig
from lorakit.core.layers import MAGNITUDE
from lorakit.core.merge import delta_weight
from lorakit.core.state import wrappers
from lorakit.methods import METHODS, MethodOptions


def test_dora_starts_exactly_at_the_base_output(ids):
    model = tiny_gpt2()
    before = model(input_ids=ids).logits
    METHODS["dora"].prepare(model, LoraConfig(targets=("c_attn", "c_fc")), MethodOptions())
    torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_dora_layer_computes_magnitude_times_normalized_weight():
    model = tiny_llama()
    METHODS["dora"].prepare(model, LoraConfig(targets=("q_proj",)), MethodOptions())
    randomize(model)
    _, layer = next(iter(wrappers(model)))
    with torch.no_grad():
        m = getattr(layer, MAGNITUDE)["default"]
        m.mul_(torch.linspace(0.5, 2.0, layer.out_features))
        x = torch.randn(3, layer.in_features)
        w = layer.weight_2d() + delta_weight(layer, "default")
        expected = x @ (m[:, None] * w / w.norm(dim=1, keepdim=True)).T
        torch.testing.assert_close(layer(x), expected)


def test_dora_trains_magnitudes_and_lora_factors_only():
    model = tiny_llama()
    METHODS["dora"].prepare(model, LoraConfig(targets=("q_proj",)), MethodOptions())
    trained = {n.rsplit(".", 2)[-2] if "lora_" in n else n.rsplit(".", 1)[-1]
               for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"lora_A", "lora_B", MAGNITUDE}


def test_rslora_scales_by_alpha_over_root_r():
    model = tiny_llama()
    METHODS["rslora"].prepare(model, LoraConfig(rank=16, alpha=8.0), MethodOptions())
    assert all(math.isclose(m.scaling["default"], 8.0 / 4.0) for _, m in wrappers(model))


def test_pissa_starts_at_the_base_output(ids):
    model = tiny_llama()
    before = model(input_ids=ids).logits
    METHODS["pissa"].prepare(model, LoraConfig(rank=4), MethodOptions())
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-5)
