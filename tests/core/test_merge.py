"""Merging: idempotent, merged == unmerged == unwrapped-after-merge, finite-checked, exact combinations."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from tiny import randomize, tiny_bert, tiny_gpt2, tiny_llama
from torch import nn

import lorakit
from lorakit import LoraConfig, MergeError
from lorakit.core import kernel
from lorakit.core.merge import delta_weight
from lorakit.core.state import wrappers

CASES = [
    (tiny_llama, LoraConfig(rank=4, alpha=8, targets="all-linear")),
    (tiny_llama, LoraConfig(rank=2, alpha=4, targets=("embed_tokens", "q_proj", "v_proj"), rslora=True)),
    (tiny_gpt2, LoraConfig(rank=4, alpha=8, targets=("c_attn", "c_fc"), slices={"c_attn": (True, False, True)})),
    (tiny_bert, LoraConfig(rank=4, alpha=8, targets=("query", "value", "word_embeddings"),
                           modules_to_save=("classifier",))),
]


@pytest.mark.parametrize("make,config", CASES)
def test_merged_equals_unmerged_equals_unwrapped_after_merge(make, config, ids):
    model = make()
    lorakit.inject(model, config)
    randomize(model)
    with torch.no_grad():
        unmerged = model(ids).logits
        lorakit.merge(model)
        merged = model(ids).logits
        lorakit.unwrap(model)
        unwrapped = model(ids).logits
    assert (merged - unmerged).abs().max() <= 1e-5
    assert (unwrapped - merged).abs().max() <= 1e-5
    assert not any(True for _ in wrappers(model))


def test_conv2d_merge_matches_unmerged():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    lorakit.inject(model, LoraConfig(rank=2, targets=("0", "2")))
    randomize(model)
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        before = model(x)
        lorakit.merge(model)
        assert (model(x) - before).abs().max() <= 1e-5


def test_merge_is_idempotent(ids):
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4))
    randomize(model)
    lorakit.merge(model)
    once = {n: p.detach().clone() for n, p in model.named_parameters()}
    lorakit.merge(model)
    assert all(torch.equal(p, once[n]) for n, p in model.named_parameters())


def test_unmerge_restores_the_original_weights(ids):
    model = tiny_llama()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    lorakit.inject(model, LoraConfig(rank=4, targets="all-linear"))
    randomize(model)
    lorakit.merge(model)
    lorakit.unmerge(model)
    lorakit.unwrap(model)
    assert max((p - original[n]).abs().max().item() for n, p in model.named_parameters()) <= 1e-6


def test_safe_merge_refuses_non_finite_results_and_changes_nothing():
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4))
    randomize(model)
    layer = model.model.layers[1].self_attn.v_proj
    with torch.no_grad():
        layer.lora_B["default"][0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(MergeError, match="non-finite LoRA weights in model.layers.1.self_attn.v_proj"):
        lorakit.merge(model, safe=True)
    with torch.no_grad():
        layer.lora_B["default"][0, 0] = 3e38  # finite, but W + ΔW overflows float32
        layer.lora_A["default"].fill_(1.0)
    with pytest.raises(MergeError, match="non-finite"):
        lorakit.merge(model, safe=True)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in before.items() if ".lora_" not in n)
    assert not any(m.merged for _, m in wrappers(model))


def test_combine_gives_exactly_the_weighted_sum_of_delta_ws():
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4, alpha=8), "a")
    lorakit.inject(model, LoraConfig(rank=2, alpha=2, targets=("q_proj", "o_proj")), "b")
    randomize(model, "a", seed=1)
    randomize(model, "b", seed=2)
    lorakit.combine(model, {"a": 0.7, "b": -0.3}, "ab")
    for _, m in wrappers(model):
        expect = sum(w * delta_weight(m, n) for n, w in (("a", 0.7), ("b", -0.3)) if n in m.lora_A)
        assert (delta_weight(m, "ab") - expect).abs().max() <= 1e-6


def test_combine_with_a_rank_is_the_best_low_rank_approximation():
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4), "a")
    lorakit.inject(model, LoraConfig(rank=4), "b")
    randomize(model, "a", seed=1)
    randomize(model, "b", seed=2)
    lorakit.combine(model, {"a": 1.0, "b": 1.0}, "ab3", rank=3)
    m = model.model.layers[0].self_attn.q_proj
    dense = delta_weight(m, "a") + delta_weight(m, "b")
    u, s, vh = torch.linalg.svd(dense)
    best = (u[:, :3] * s[:3]) @ vh[:3]
    assert m.lora_A["ab3"].shape[0] == 3
    assert (delta_weight(m, "ab3") - best).abs().max() <= 1e-5


@pytest.mark.parametrize("make,config", [
    (tiny_gpt2, LoraConfig(rank=2, targets=("c_attn",), slices={"c_attn": (True, False, True)})),
    (tiny_llama, LoraConfig(rank=4, targets=("q_proj", "v_proj", "embed_tokens"))),  # the merge kernel's path
])
def test_merged_weights_is_pure_and_matches_merge_bit_for_bit(make, config):
    model = make()
    lorakit.inject(model, config)
    randomize(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pure = lorakit.merged_weights(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    lorakit.merge(model)
    for path, w in pure.items():
        assert torch.equal(model.get_submodule(path.rsplit(".", 1)[0]).base_layer.weight, w)


def merged_once() -> nn.Module:
    """A tiny Llama with an adapter merged and unmerged once: its merge plan (and kernel call) is cached."""
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4))
    randomize(model)
    lorakit.merge(model)
    lorakit.unmerge(model)
    return model


def test_merge_follows_the_model_to_a_new_dtype(ids):
    model = merged_once()
    model.double()  # replaces every storage: a cached merge plan must not write to the old ones
    with torch.no_grad():
        unmerged = model(ids).logits
        lorakit.merge(model)
        assert (model(ids).logits - unmerged).abs().max() <= 1e-9


def test_merge_follows_a_replaced_weight_parameter(ids):
    # Assigning a new Parameter keeps every other storage: the cached plan must see it and merge into the new one.
    model = merged_once()
    layer = next(iter(wrappers(model)))[1]
    old = layer.base_layer.weight
    before = old.detach().clone()
    layer.base_layer.weight = nn.Parameter(before.clone(), requires_grad=False)
    with torch.no_grad():
        unmerged = model(ids).logits
        lorakit.merge(model)
        assert (model(ids).logits - unmerged).abs().max() <= 1e-5
    assert torch.equal(old, before)  # a stale plan would have written into the replaced parameter
    assert not torch.equal(layer.base_layer.weight, before)


def _fused_linear(model: nn.Module) -> None:
    """Put a loralib-style fused q,k,v Linear (out = 3 x hidden) with only q and v adapted into a tiny Llama's
    first layer, so a merge has row slices of one weight as well as whole weights."""
    attn = model.model.layers[0].self_attn
    attn.qkv = nn.Linear(attn.q_proj.in_features, 3 * attn.q_proj.out_features, bias=False)


@pytest.mark.skipif(kernel.status() != "fused kernel", reason=f"merge kernel not available: {kernel.status()}")
def test_the_fused_merge_kernel_agrees_with_addmm_to_fp32_rounding(ids, monkeypatch):
    model = tiny_llama()
    _fused_linear(model)
    lorakit.inject(model, LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj", "qkv"),
                                     slices={"qkv": (True, False, True)}))
    randomize(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lorakit.merge(model)
    fused = {n: p.detach().clone() for n, p in model.named_parameters()}
    k = slice(model.config.hidden_size, 2 * model.config.hidden_size)  # the fused weight's k rows: not adapted
    assert fused["model.layers.0.self_attn.qkv.base_layer.weight"][k].equal(
        before["model.layers.0.self_attn.qkv.base_layer.weight"][k])
    lorakit.unmerge(model)
    monkeypatch.setattr(kernel.MERGE, "_loaded", (None, "disabled by the test"))
    copy = tiny_llama()
    _fused_linear(copy)
    lorakit.inject(copy, LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj", "qkv"),
                                    slices={"qkv": (True, False, True)}))
    copy.load_state_dict(before)
    lorakit.merge(copy)
    changed = 0
    for n, p in copy.named_parameters():
        scale = before[n].abs().max().item() + 1e-30
        assert (p.detach() - fused[n]).abs().max().item() <= 1e-6 * scale, n
        changed += not p.detach().equal(before[n])
    assert changed == 2 * 2 + 2 + 1  # q,v in both layers, down_proj in both, the fused qkv


def test_a_deep_copy_merges_into_its_own_weights(ids):
    # A merge prepares its kernel call with pointers into the weights; a copy of the model must not reuse them.
    model = merged_once()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    copy = deepcopy(model)
    with torch.no_grad():
        unmerged = copy(ids).logits
        lorakit.merge(copy)
        assert (copy(ids).logits - unmerged).abs().max() <= 1e-5
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())


def test_without_a_compiler_merges_fall_back_to_addmm(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernel.MERGE, "_loaded", None)
    assert kernel.status().startswith("addmm_ (could not build merge.c")
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4))
    randomize(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lorakit.merge(model)
    lorakit.unmerge(model)
    assert max((p - before[n]).abs().max().item() for n, p in model.named_parameters()) <= 1e-6
