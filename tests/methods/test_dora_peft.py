"""DoRA in PEFT's file format: PEFT loads a lorakit dora run's adapter with the same logits, lorakit loads PEFT's
DoRA adapters with the same logits, training with dropout computes what PEFT computes, and merging folds it into W
as PEFT's merge_and_unload does."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import randomize, tiny_gpt2, tiny_llama, tiny_tokenizer

import lorakit
from lorakit import AdapterFileError, ConfigError, LoraConfig, MergeError
from lorakit.core.io import restore_adapter
from lorakit.core.layers import MAGNITUDE
from lorakit.core.state import wrappers
from lorakit.methods import METHODS, MethodOptions, load_dora, load_method
from lorakit.train.config import RunConfig

peft = pytest.importorskip("peft")

CASES = {
    "llama": (tiny_llama, LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"))),
    "gpt2-conv1d": (tiny_gpt2, LoraConfig(rank=4, alpha=8, targets=("c_attn", "c_fc"))),
    "gpt2-fused-qv": (tiny_gpt2, LoraConfig(rank=2, alpha=4, targets=("c_attn",),
                                            slices={"c_attn": (True, False, True)})),
}


def trained_dora(case: str, dropout: float = 0.0):
    """A lorakit dora model whose A, B and magnitudes moved off their init (as training would), and its Export."""
    make, lora = CASES[case]
    model = make()
    config = RunConfig(lora=LoraConfig(**{**lora.to_dict(), "dropout": dropout}))
    export = METHODS["dora"].prepare(model, config.lora, config.method_options)
    randomize(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, layer in wrappers(model):
            m = getattr(layer, MAGNITUDE)["default"]
            m.mul_(1 + 0.5 * torch.rand(m.shape, generator=g))
    return make, model, export


def peft_model(make, directory, trainable: bool = False):
    """PEFT's model from `directory`; fails on any warning about missing, unexpected or mismatched keys."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = peft.PeftModel.from_pretrained(make(), str(directory), is_trainable=trainable)
    said = [str(w.message).lower() for w in caught]
    assert not [s for s in said if any(k in s for k in ("missing", "unexpected", "mismatch", "not init"))]
    return theirs


def peft_dora(make, targets: list[str], seed: int = 4):
    """A PEFT DoRA model with random A, B and magnitudes."""
    fused = make is tiny_gpt2
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True, fan_in_fan_out=fused)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fan_in_fan_out notices
        theirs = peft.get_peft_model(make(), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "lora_magnitude_vector" in n:
                p.mul_(1 + 0.5 * torch.rand(p.shape, generator=g))
    return theirs.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_a_dora_runs_saved_adapter_restores_into_it_bit_exactly(case, tmp_path):
    make, model, export = trained_dora(case)
    export.write(model, tmp_path)
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}
    randomize(model, seed=5)
    with torch.no_grad():
        for _, layer in wrappers(model):
            getattr(layer, MAGNITUDE)["default"].mul_(2)
    restore_adapter(model, tmp_path, "default")
    assert all(torch.equal(p, saved[n]) for n, p in model.named_parameters() if ".lora_" in n)


@pytest.mark.parametrize("case", list(CASES))
def test_peft_loads_a_lorakit_dora_run_with_identical_logits(case, tmp_path, ids):
    make, model, export = trained_dora(case)
    export.write(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["peft_type"] == "LORA"
    magnitudes = {k: t for k, t in load_file(tmp_path / "adapter_model.safetensors").items()
                  if k.endswith(".lora_magnitude_vector")}
    assert len(magnitudes) == sum(1 for _ in wrappers(model))
    assert all(k.startswith("base_model.model.") and t.dim() == 1 for k, t in magnitudes.items())
    theirs = peft_model(make, tmp_path).eval()
    with torch.no_grad():
        assert (theirs(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("make, targets", [(tiny_llama, ["q_proj", "v_proj", "up_proj"]),
                                           (tiny_gpt2, ["c_attn", "c_proj"])])
def test_lorakit_loads_a_peft_dora_adapter_with_identical_logits(make, targets, tmp_path, ids):
    theirs = peft_dora(make, targets)
    theirs.save_pretrained(tmp_path)
    ours = make()
    assert load_dora(ours, tmp_path) == "default"
    assert not any(p.requires_grad for p in ours.parameters())
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        assert not torch.allclose(expected, make()(input_ids=ids).logits, atol=1e-3)  # the adapter does something
        assert (ours(input_ids=ids).logits - expected).abs().max() <= 1e-5


def test_a_saved_dora_run_loads_back_bit_exactly(tmp_path, ids):
    make, model, export = trained_dora("gpt2-fused-qv")
    export.write(model, tmp_path)
    fresh = make()
    assert load_method(fresh, tmp_path)["method"] == "dora"
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)


def test_training_with_dropout_gives_peft_outputs_and_gradients(tmp_path, ids, monkeypatch):
    # PEFT (and DoRA's reference code) feed the dropped-out input to the LoRA path and to the magnitude's
    # correction of the base path. A mask fixed by shape makes both sides drop the same entries.
    def fixed_dropout(x, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return x
        keep = (torch.arange(x.numel(), device=x.device) % 3 != 0).reshape(x.shape).to(x.dtype)
        return x * keep / (1 - p)

    make, model, export = trained_dora("llama", dropout=0.3)
    export.write(model, tmp_path)
    theirs = peft_model(make, tmp_path, trainable=True)
    monkeypatch.setattr(torch.nn.functional, "dropout", fixed_dropout)
    model.train()
    theirs.train()
    ours_out, theirs_out = model(input_ids=ids).logits, theirs(input_ids=ids).logits
    assert (ours_out - theirs_out).abs().max() <= 1e-5
    with torch.no_grad():
        assert (ours_out - model.eval()(input_ids=ids).logits).abs().max() > 1e-3  # dropout really acted
    ours_out.square().mean().backward()
    theirs_out.square().mean().backward()
    peft_grads = {n.removeprefix("base_model.model.").replace("lora_magnitude_vector", MAGNITUDE)
                  .removesuffix(".weight"): p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    ours = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert set(ours) == set(peft_grads)
    for n, grad in ours.items():
        torch.testing.assert_close(grad, peft_grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("case", list(CASES))
def test_merging_dora_gives_the_unmerged_logits_and_unmerge_restores_w(case, ids):
    _, model, _ = trained_dora(case)
    weights = {p: m.weight_2d().detach().clone() for p, m in wrappers(model)}
    with torch.no_grad():
        before = model(input_ids=ids).logits
        folded = lorakit.merged_weights(model, "default")
        lorakit.merge(model, "default")
        lorakit.merge(model, "default")  # idempotent
        merged = model(input_ids=ids).logits
        for p, m in wrappers(model):
            torch.testing.assert_close(m.base_layer.weight, folded[f"{p}.weight"], rtol=0, atol=0)
        lorakit.unmerge(model)
        again = model(input_ids=ids).logits
    torch.testing.assert_close(merged, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, before, rtol=1e-5, atol=1e-5)
    for p, m in wrappers(model):
        torch.testing.assert_close(m.weight_2d(), weights[p], rtol=0, atol=1e-6, msg=p)


@pytest.mark.parametrize("case", ["llama", "gpt2-conv1d"])
def test_our_merged_dora_weights_equal_peft_merge_and_unload(case, tmp_path):
    make, model, export = trained_dora(case)
    export.write(model, tmp_path)
    theirs = peft_model(make, tmp_path).merge_and_unload()
    lorakit.merge(model, "default")
    lorakit.unwrap(model)
    ours = dict(model.named_parameters())
    for name, p in theirs.named_parameters():
        torch.testing.assert_close(ours[name], p, rtol=1e-5, atol=1e-6, msg=name)


def test_dora_cannot_be_combined_or_merged_over_another_merged_adapter(ids):
    _, model, _ = trained_dora("llama")
    with pytest.raises(MergeError, match="cannot be combined"):
        lorakit.combine(model, {"default": 1.0}, "sum")
    lorakit.inject(model, LoraConfig(rank=2, alpha=2, targets=("q_proj",)), "other")
    lorakit.merge(model, "other")
    weights = {p: m.weight_2d().detach().clone() for p, m in wrappers(model)}
    with pytest.raises(MergeError, match="already merged into .* would enter its norm"):
        lorakit.merge(model, "default")
    for p, m in wrappers(model):  # nothing changed, not even the layers before the refusing one
        assert torch.equal(m.weight_2d(), weights[p]), p


def test_lorakit_merge_writes_a_plain_model_from_a_dora_adapter(tmp_path, ids):
    from transformers import AutoModelForCausalLM

    from lorakit.cli import main

    make, model, export = trained_dora("llama")
    export.write(model, tmp_path / "adapter")
    base = make()
    base.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    assert main(["merge", "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter"),
                 "--out", str(tmp_path / "merged")]) == 0
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_plain_lora_loading_refuses_dora_files_and_names_load_dora(tmp_path):
    make, model, export = trained_dora("llama")
    export.write(model, tmp_path)
    with pytest.raises(AdapterFileError, match="DoRA is not supported by load_adapter.*lorakit.methods.load_dora"):
        lorakit.load_adapter(make(), tmp_path)


def test_an_incomplete_or_misshapen_dora_file_is_refused_before_anything_changes(tmp_path):
    make, model, export = trained_dora("llama")
    export.write(model, tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers."
    del weights[f"{prefix}0.self_attn.q_proj.lora_magnitude_vector"]
    weights[f"{prefix}1.self_attn.v_proj.lora_magnitude_vector"] = torch.ones(3)
    save_file(weights, tmp_path / "adapter_model.safetensors")
    fresh = make()
    with pytest.raises(AdapterFileError) as error:
        load_dora(fresh, tmp_path)
    assert "layers.0.self_attn.q_proj: has no lora_magnitude_vector" in str(error.value)
    assert "layers.1.self_attn.v_proj: lora_magnitude_vector (3,) does not fit 16 outputs" in str(error.value)
    assert not hasattr(fresh, "_lorakit")


def test_dora_refuses_layers_without_a_row_norm():
    with pytest.raises(ConfigError, match=r"Linear and Conv1D layers only; leave model.embed_tokens \(Embedding\)"):
        METHODS["dora"].prepare(tiny_llama(), LoraConfig(targets=("q_proj", "embed_tokens")), MethodOptions())
