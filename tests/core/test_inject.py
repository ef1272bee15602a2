"""Injection, targets, freezing, switching and unwrapping, and the errors for bad input."""

from __future__ import annotations

import pytest
import torch
from tiny import randomize, tiny_bert, tiny_gpt2, tiny_llama
from torch import nn

import lorakit
from lorakit import AdapterError, ConfigError, LoraConfig, TargetError
from lorakit.core.targets import find_targets


def test_inject_freezes_everything_but_the_new_adapter():
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A.default" in n or ".lora_B.default" in n for n in trainable)
    report = lorakit.adapter_report(model, "default")
    assert report.trainable == 2 * (4 * 32 + 32 * 4) + 2 * (4 * 32 + 16 * 4)
    assert report.total - report.trainable == report.base_total
    assert "trainable params" in str(report)


@pytest.mark.parametrize("bias", ["none", "lora_only", "all"])
def test_bias_modes_make_the_right_biases_trainable(bias):
    model = tiny_gpt2()
    lorakit.inject(model, LoraConfig(rank=2, targets=("c_attn",), bias=bias))
    biases = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    # GPT-2 per block: c_attn, c_proj, c_fc, mlp.c_proj, ln_1, ln_2 biases; plus ln_f.
    assert len(biases) == {"none": 0, "lora_only": 2, "all": 2 * 6 + 1}[bias]


def test_targets_take_suffixes_regexes_all_linear_and_layer_filters():
    model = tiny_llama()
    assert {n for n, _ in find_targets(model, ("q_proj",))} == {
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"}
    assert {n for n, _ in find_targets(model, r".*layers\.1\.self_attn\.(k|v)_proj")} == {
        "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"}
    all_linear = {n for n, _ in find_targets(model, "all-linear")}
    assert len(all_linear) == 2 * 7 and "lm_head" not in all_linear
    assert {n for n, _ in find_targets(model, ("v_proj",), layers=(1,))} == {"model.layers.1.self_attn.v_proj"}


def test_a_target_that_matches_nothing_lists_what_exists():
    with pytest.raises(TargetError, match=r"matched no module.*q_proj: Linear x2"):
        lorakit.inject(tiny_llama(), LoraConfig(targets=("query",)))


def test_a_target_of_an_unsupported_type_is_refused():
    with pytest.raises(TargetError, match=r"cannot adapt.*LlamaAttention"):
        lorakit.inject(tiny_llama(), LoraConfig(targets=("self_attn",)))


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"rank": 0}, "rank must be a positive integer"),
        ({"rank": -3}, "rank must be a positive integer"),
        ({"alpha": 0}, "alpha must be a positive number"),
        ({"bias": "some"}, "bias must be one of"),
        ({"init": "xavier"}, "init must be one of"),
        ({"dropout": 1.5}, "dropout must be in"),
        ({"targets": ()}, "targets must name at least one module"),
    ],
)
def test_bad_config_values_raise_config_error(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        LoraConfig(**kwargs)


def test_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        LoraConfig(rank=0, alpha=-1, bias="x")
    assert all(s in str(e.value) for s in ("rank", "alpha", "bias"))


def test_config_round_trips_through_a_dict_and_refuses_unknown_keys():
    c = LoraConfig(rank=4, targets=("q_proj",), slices={"c_attn": (True, False, True)}, layers=(0, 1))
    assert LoraConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown LoraConfig keys.*'r'"):
        LoraConfig.from_dict({"r": 4})


def test_unwrap_restores_the_original_module_objects_and_flags(ids):
    model = tiny_llama()
    originals = dict(model.named_modules())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = model(ids).logits
    lorakit.inject(model, LoraConfig(rank=4, targets="all-linear", modules_to_save=("lm_head",)))
    randomize(model)
    assert lorakit.unwrap(model) is model
    assert {n: id(m) for n, m in model.named_modules()} == {n: id(m) for n, m in originals.items()}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert torch.equal(model(ids).logits, before)
    assert not hasattr(model, "_lorakit")


def test_save_pretrained_of_a_wrapped_model_refuses_until_unwrap(tmp_path):
    model = lorakit.inject(tiny_llama(), LoraConfig(rank=4))
    with pytest.raises(AdapterError, match="lorakit.save_adapter"):
        model.save_pretrained(tmp_path / "wrapped")
    assert not (tmp_path / "wrapped").exists()
    lorakit.unwrap(model)
    assert "save_pretrained" not in vars(model)
    model.save_pretrained(tmp_path / "plain")
    assert (tmp_path / "plain" / "model.safetensors").is_file()


def test_set_active_switches_adapters_without_copying_weights(ids):
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4), "a")
    lorakit.inject(model, LoraConfig(rank=2, targets=("o_proj",)), "b")
    randomize(model, "a", seed=1)
    randomize(model, "b", seed=2)
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    base = model.model.layers[0].self_attn.q_proj.base_layer
    with torch.no_grad():
        out_a = model(ids).logits  # the first adapter is active
        lorakit.set_active(model, "b")
        out_b = model(ids).logits
        lorakit.set_active(model, None)
        out_base = model(ids).logits
        with lorakit.disable_adapters(model):
            pass
        lorakit.set_active(model, "a")
        assert torch.equal(model(ids).logits, out_a)
        with lorakit.disable_adapters(model):
            assert torch.equal(model(ids).logits, out_base)
    assert not torch.equal(out_a, out_b) and not torch.equal(out_a, out_base)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
    assert model.model.layers[0].self_attn.q_proj.base_layer is base
    with pytest.raises(AdapterError, match="no adapter named 'c'.*'a', 'b'"):
        lorakit.set_active(model, "c")


def test_injecting_an_existing_name_raises():
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4))
    with pytest.raises(AdapterError, match="already loaded"):
        lorakit.inject(model, LoraConfig(rank=4))


def test_modules_to_save_trains_a_copy_and_leaves_the_original(ids):
    model = tiny_bert()
    head = model.classifier
    lorakit.inject(model, LoraConfig(rank=4, targets=("query", "value"), modules_to_save=("classifier",)))
    saved = model.classifier
    assert saved.original_module is head and not head.weight.requires_grad
    assert saved.copies["default"].weight.requires_grad
    randomize(model)
    with torch.no_grad():
        adapted = model(ids).logits
        with lorakit.disable_adapters(model):
            plain = model(ids).logits
    assert not torch.allclose(adapted, plain)


def test_modules_to_save_that_match_nothing_raise():
    with pytest.raises(TargetError, match="modules_to_save names 'head'"):
        lorakit.inject(tiny_bert(), LoraConfig(targets=("query",), modules_to_save=("head",)))


def test_delete_adapter_removes_it_everywhere():
    model = tiny_llama()
    lorakit.inject(model, LoraConfig(rank=4), "a")
    lorakit.inject(model, LoraConfig(rank=4), "b")
    lorakit.delete_adapter(model, "a")
    assert not any(".a" in n.rsplit("lora_A", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n)
    assert model._lorakit.active == "b"


@pytest.mark.parametrize("make,targets", [(tiny_llama, ("q_proj", "v_proj")), (tiny_gpt2, ("c_attn", "c_fc"))])
def test_pissa_starts_at_the_base_output_and_unwrap_restores_the_weights(make, targets, ids):
    model = make()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        before = model(ids).logits
        lorakit.inject(model, LoraConfig(rank=4, init="pissa", targets=targets))
        assert torch.allclose(model(ids).logits, before, atol=1e-5)
    lorakit.unwrap(model)
    assert all(torch.equal(p, w[n]) for n, p in model.named_parameters())


def test_plain_torch_models_work_too():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    lorakit.inject(model, LoraConfig(rank=2, targets="all-linear"))
    assert sum(p.requires_grad for p in model.parameters()) == 4
