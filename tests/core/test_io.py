"""Adapter files: PEFT's format both ways, bit-exact round trips, atomic writes, and clear refusals."""

from __future__ import annotations

import json
import os

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import randomize, tiny_bert, tiny_gpt2, tiny_llama

import lorakit
from lorakit import AdapterError, AdapterFileError, LoraConfig
from lorakit.core.io import restore_adapter

CASES = {
    "llama": (tiny_llama, LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj", "embed_tokens"))),
    "llama-rslora-layers": (tiny_llama, LoraConfig(rank=4, alpha=3, targets="all-linear", rslora=True, layers=(1,))),
    "gpt2-fused-qv-bias": (tiny_gpt2, LoraConfig(rank=2, alpha=4, targets=("c_attn", "c_proj"), bias="lora_only",
                                                 slices={"c_attn": (True, False, True)})),
    "bert-head": (tiny_bert, LoraConfig(rank=4, alpha=8, targets=("query", "value"), modules_to_save=("classifier",))),
}


def adapted(case: str):
    make, config = CASES[case]
    model = lorakit.inject(make(), config)
    randomize(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and n.endswith("bias"):
                p.add_(0.05)
    return make, model


@pytest.mark.parametrize("case", list(CASES))
def test_save_then_load_round_trips_bit_exactly(case, tmp_path, ids):
    make, model = adapted(case)
    lorakit.save_adapter(model, tmp_path)
    fresh = make()
    assert lorakit.load_adapter(fresh, tmp_path) == "default"
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)
    ours = {n: p for n, p in model.named_parameters() if ".lora_" in n or ".copies." in n}
    theirs = dict(fresh.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in ours.items())


@pytest.mark.parametrize("case", list(CASES))
def test_peft_loads_our_files_with_the_same_logits(case, tmp_path, ids):
    make, model = adapted(case)
    lorakit.save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "lorakit" not in json.dumps(config)
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.") and ".default" not in k for k in keys)
    pm = peft.PeftModel.from_pretrained(make(), tmp_path)
    with torch.no_grad():
        assert (pm(ids).logits - model(ids).logits).abs().max() <= 1e-5


def peft_saved(make, tmp_path, **kw):
    torch.manual_seed(5)
    pm = peft.get_peft_model(make(), peft.LoraConfig(init_lora_weights=False, **kw))
    pm.eval()
    if kw.get("bias") == "all":
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if n.endswith("bias"):
                    p.add_(0.05)
    pm.save_pretrained(tmp_path)
    return pm


@pytest.mark.parametrize(
    "make,kw",
    [
        (tiny_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")),
        (tiny_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj", "embed_tokens"],
                          rank_pattern={"layers.1.self_attn.q_proj": 2}, alpha_pattern={"o_proj": 3},
                          use_rslora=True)),
        (tiny_llama, dict(r=4, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")),
        (tiny_llama, dict(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"], layers_to_transform=[1],
                          layers_pattern="layers")),
        (tiny_gpt2, dict(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True, bias="all")),
        (tiny_bert, dict(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"],
                         task_type="SEQ_CLS")),
    ],
)
def test_we_load_peft_files_with_the_same_logits(make, kw, tmp_path, ids):
    pm = peft_saved(make, tmp_path, **kw)
    ours = make()
    lorakit.load_adapter(ours, tmp_path)
    with torch.no_grad():
        assert (ours(ids).logits - pm(ids).logits).abs().max() <= 1e-5


def test_several_adapters_load_onto_one_model_and_the_first_is_active(tmp_path, ids):
    for i, name in enumerate(("a", "b")):
        model = lorakit.inject(tiny_llama(), LoraConfig(rank=2 + 2 * i))
        randomize(model, seed=i)
        lorakit.save_adapter(model, tmp_path / name)
    model = tiny_llama()
    assert lorakit.load_adapter(model, tmp_path / "a") == "default"
    assert lorakit.load_adapter(model, tmp_path / "b", "b") == "b"
    assert model._lorakit.active == "default"
    with pytest.raises(AdapterError, match="already loaded"):
        lorakit.load_adapter(model, tmp_path / "b", "b")


@pytest.mark.parametrize("make,targets", [(tiny_llama, ("q_proj", "v_proj")), (tiny_gpt2, ("c_attn",))])
def test_pissa_adapters_load_on_the_original_base(make, targets, tmp_path, ids):
    model = lorakit.inject(make(), LoraConfig(rank=4, init="pissa", targets=targets))
    randomize(model)
    lorakit.save_adapter(model, tmp_path)
    fresh = make()
    lorakit.load_adapter(fresh, tmp_path)
    with torch.no_grad():
        assert (fresh(ids).logits - model(ids).logits).abs().max() <= 1e-4
    assert json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]  # saved at rank 2r


RESTORE_CASES = {**CASES, "llama-pissa": (tiny_llama, LoraConfig(rank=4, init="pissa", targets=("q_proj", "v_proj")))}


@pytest.mark.parametrize("case", list(RESTORE_CASES))
def test_restore_adapter_refills_the_same_parameters_bit_exactly(case, tmp_path):
    make, config = RESTORE_CASES[case]
    model = lorakit.inject(make(), config)
    randomize(model)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    lorakit.save_adapter(model, tmp_path)
    randomize(model, seed=2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and ".lora_" not in n:
                p.add_(1.0)
    objects = {n: id(p) for n, p in model.named_parameters()}
    restore_adapter(model, tmp_path, "default")
    assert {n: id(p) for n, p in model.named_parameters()} == objects
    now = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert now.keys() == trained.keys() and all(torch.equal(now[n], trained[n]) for n in trained)


def test_restore_adapter_refuses_another_configs_file_and_changes_nothing(tmp_path):
    lorakit.save_adapter(lorakit.inject(tiny_llama(), LoraConfig(rank=2, targets=("q_proj", "k_proj"))), tmp_path)
    model = lorakit.inject(tiny_llama(), LoraConfig(rank=4, targets=("q_proj", "v_proj")))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(AdapterFileError) as e:
        restore_adapter(model, tmp_path, "default")
    said = str(e.value)
    assert "layers.0.self_attn.v_proj: adapter 'default' has this module" in said
    assert "layers.0.self_attn.k_proj: in the file" in said and "A (2, 32)" in said
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_writes_are_atomic(tmp_path, monkeypatch):
    _, model = adapted("llama")
    lorakit.save_adapter(model, tmp_path)
    good = (tmp_path / "adapter_model.safetensors").read_bytes()
    randomize(model, seed=42)

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        lorakit.save_adapter(model, tmp_path)
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                          "lorakit.json"]


@pytest.fixture
def saved(tmp_path):
    _, model = adapted("llama")
    lorakit.save_adapter(model, tmp_path)
    return tmp_path


def test_a_truncated_weights_file_is_refused(saved):
    path = saved / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(AdapterFileError, match="not a valid safetensors file"):
        lorakit.load_adapter(tiny_llama(), saved)


def test_a_pickle_weights_file_is_refused_without_unpickling(saved):
    (saved / "adapter_model.safetensors").rename(saved / "adapter_model.bin")
    with pytest.raises(AdapterFileError, match="never unpickles"):
        lorakit.load_adapter(tiny_llama(), saved)
    (saved / "adapter_model.safetensors").write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(AdapterFileError, match="not a valid safetensors"):
        lorakit.load_adapter(tiny_llama(), saved)


def edit_config(directory, **changes) -> None:
    cfg = json.loads((directory / "adapter_config.json").read_text())
    (directory / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize("off", [None, False, "", [], {}])
def test_a_future_peft_key_that_is_off_is_ignored(saved, off, ids):
    expected = tiny_llama()
    lorakit.load_adapter(expected, saved)
    edit_config(saved, lora_future_feature=off)
    model = tiny_llama()
    lorakit.load_adapter(model, saved)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected(ids).logits)


def test_a_future_peft_key_that_is_on_is_refused_with_its_name_and_value(saved):
    edit_config(saved, lora_colour="blue", lora_future_feature={"k": 2})
    with pytest.raises(AdapterFileError) as e:
        lorakit.load_adapter(tiny_llama(), saved)
    assert "unknown key lora_colour='blue'" in str(e.value)
    assert "unknown key lora_future_feature={'k': 2}" in str(e.value)


def test_a_known_feature_that_changes_the_math_is_refused_only_when_on(saved):
    edit_config(saved, lora_bias=False, layer_replication=None, trainable_token_indices=[])
    lorakit.load_adapter(tiny_llama(), saved)
    edit_config(saved, lora_bias=True)
    with pytest.raises(AdapterFileError, match="lora_bias=True: LoRA bias terms is not supported"):
        lorakit.load_adapter(tiny_llama(), saved)


def test_a_malformed_or_missing_config_is_refused(saved, tmp_path_factory):
    (saved / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        lorakit.load_adapter(tiny_llama(), saved)
    with pytest.raises(AdapterFileError, match="does not exist"):
        lorakit.load_adapter(tiny_llama(), tmp_path_factory.mktemp("x") / "nope")
    (saved / "adapter_config.json").unlink()
    with pytest.raises(AdapterFileError, match="adapter_config.json is missing"):
        lorakit.load_adapter(tiny_llama(), saved)


def test_an_adapter_for_another_base_model_is_refused(saved):
    with pytest.raises(AdapterFileError, match="different base model.*model_type"):
        lorakit.load_adapter(tiny_gpt2(), saved)
    (saved / "lorakit.json").unlink()  # a PEFT file without our fingerprint: module paths and shapes decide
    with pytest.raises(AdapterFileError, match="no such module in this model"):
        lorakit.load_adapter(tiny_gpt2(), saved)


def test_mismatched_shapes_are_listed_and_nothing_changes(saved, ids):
    weights = load_file(saved / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    weights[key] = torch.zeros(4, 31)
    save_file(weights, saved / "adapter_model.safetensors")
    model = tiny_llama()
    before = model(ids).logits
    with pytest.raises(AdapterFileError, match=r"q_proj: lora_A \(4, 31\).*do not fit"):
        lorakit.load_adapter(model, saved)
    assert not hasattr(model, "_lorakit") and torch.equal(model(ids).logits, before)


def test_dora_and_other_non_lora_files_are_refused(saved):
    edit_config(saved, use_dora=True)
    with pytest.raises(AdapterFileError, match="DoRA is not supported"):
        lorakit.load_adapter(tiny_llama(), saved)
