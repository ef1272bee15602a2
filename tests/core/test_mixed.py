"""Many adapters on one base: a mixed batch equals running each row alone with its own adapter."""

from __future__ import annotations

import pytest
import torch
from tiny import randomize, tiny_bert, tiny_gpt2, tiny_llama

import lorakit
from lorakit import AdapterError, LoraConfig


def three_adapters(model, configs):
    for i, (name, cfg) in enumerate(configs.items()):
        lorakit.inject(model, cfg, name)
        randomize(model, name, seed=10 + i)
    return model


def solo(model, ids, name):
    lorakit.set_active(model, name)
    out = model(ids).logits
    return out


@pytest.mark.parametrize(
    "make,configs",
    [
        (tiny_llama, {"a": LoraConfig(rank=4), "b": LoraConfig(rank=8, alpha=4, targets="all-linear"),
                      "c": LoraConfig(rank=2, targets=("o_proj", "embed_tokens"))}),
        (tiny_gpt2, {"a": LoraConfig(rank=2, targets=("c_attn",), slices={"c_attn": (True, False, True)}),
                     "b": LoraConfig(rank=4, targets=("c_attn", "c_proj"))}),
        (tiny_bert, {"a": LoraConfig(rank=2, targets=("query", "value"), modules_to_save=("classifier",)),
                     "b": LoraConfig(rank=4, targets=("query", "key", "dense"), modules_to_save=("classifier",))}),
    ],
)
def test_a_mixed_batch_equals_each_row_run_alone(make, configs, ids):
    model = three_adapters(make(), configs)
    names = list(configs) + [None]
    choices = [names[i % len(names)] for i in range(ids.shape[0] + 2)]
    full = torch.cat([ids, ids[:2]])
    for batch in (full, full[:, :4]):  # long rows take the per-row path, short ones the all-present-adapters one
        with torch.no_grad():
            with lorakit.adapter_rows(model, choices):
                mixed = model(batch).logits
            for i, name in enumerate(choices):
                alone = solo(model, batch[i : i + 1], name)
                assert (mixed[i] - alone[0]).abs().max() <= 1e-5, (i, name)


def test_mixed_generate_equals_each_request_generated_alone():
    model = three_adapters(tiny_llama(), {"a": LoraConfig(rank=4), "b": LoraConfig(rank=8, targets="all-linear")})
    prompts = torch.randint(3, 128, (3, 5), generator=torch.Generator().manual_seed(3))
    choices = ["a", None, "b"]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        with lorakit.adapter_rows(model, choices):
            greedy = model.generate(prompts, **kw)
            beams = model.generate(prompts, num_beams=2, **kw)
        for i, name in enumerate(choices):
            lorakit.set_active(model, name)
            assert torch.equal(model.generate(prompts[i : i + 1], **kw)[0], greedy[i])
            assert torch.equal(model.generate(prompts[i : i + 1], num_beams=2, **kw)[0], beams[i])


def test_adapter_ids_tensor_selects_by_load_order(ids):
    model = three_adapters(tiny_llama(), {"a": LoraConfig(rank=4), "b": LoraConfig(rank=2)})
    with torch.no_grad():
        with lorakit.adapter_rows(model, torch.tensor([2, 0, 1])):
            by_id = model(ids).logits
        with lorakit.adapter_rows(model, ["b", None, "a"]):
            by_name = model(ids).logits
    assert torch.equal(by_id, by_name)
    with pytest.raises(AdapterError, match="adapter ids must be"):
        with lorakit.adapter_rows(model, torch.tensor([5])):
            pass
    with pytest.raises(AdapterError, match="no adapter named 'zz'"):
        with lorakit.adapter_rows(model, ["zz"]):
            pass


def test_mixed_batches_see_weights_changed_in_place(ids):
    model = three_adapters(tiny_llama(), {"a": LoraConfig(rank=4)})
    with torch.no_grad():
        with lorakit.adapter_rows(model, ["a"] * 3):
            first = model(ids).logits
        randomize(model, "a", seed=99)  # e.g. an optimizer step
        with lorakit.adapter_rows(model, ["a"] * 3):
            second = model(ids).logits
        lorakit.set_active(model, "a")
        assert (second - model(ids).logits).abs().max() <= 1e-5
    assert not torch.allclose(first, second)


def test_adapters_loaded_under_inference_mode_serve_mixed_batches(tmp_path, ids):
    donor = three_adapters(tiny_llama(), {"a": LoraConfig(rank=4), "b": LoraConfig(rank=2, targets="all-linear")})
    for name in ("a", "b"):
        lorakit.save_adapter(donor, tmp_path / name, name)
    model = tiny_llama()
    with torch.inference_mode():
        for name in ("a", "b"):
            lorakit.load_adapter(model, tmp_path / name, name)
        with lorakit.adapter_rows(model, ["b", "a", None]):
            mixed = model(ids).logits
        with lorakit.adapter_rows(model, ["b", "a", None]):  # same rows again: cached tables reused
            again = model(ids).logits
        for i, name in enumerate(["b", "a", None]):
            assert (mixed[i] - solo(model, ids[i : i + 1], name)[0]).abs().max() <= 1e-5
    assert torch.equal(mixed, again)


def test_short_rows_over_many_equal_rank_adapters_equal_each_row_alone():
    """Decode-like rows (3 tokens) over four rank-4 adapters take the per-row path; it must agree too."""
    model = three_adapters(tiny_llama(), {n: LoraConfig(rank=4) for n in "abcd"})
    batch = torch.randint(3, 128, (5, 3), generator=torch.Generator().manual_seed(5))
    choices = ["a", "b", "c", "d", None]
    with torch.no_grad():
        with lorakit.adapter_rows(model, choices):
            mixed = model(batch).logits
        for i, name in enumerate(choices):
            assert (mixed[i] - solo(model, batch[i : i + 1], name)[0]).abs().max() <= 1e-5
