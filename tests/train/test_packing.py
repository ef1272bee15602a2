"""Packed batches (train.batching): one row per micro-batch, no padding, the same loss and gradients as padding."""

from __future__ import annotations

import pytest
import torch
from tinytrain import tiny_llama, tiny_pairs, tiny_tokenizer

import lorakit
from lorakit.core.errors import ConfigError
from lorakit.data import IGNORE_INDEX, Example, collate, model_inputs, tokenize_pairs
from lorakit.data.tokenize import collate_packed
from lorakit.methods import METHODS, MethodOptions
from lorakit.train import TrainConfig, fit
from lorakit.train.batches import packs_correctly, use_packing
from lorakit.train.loop import cross_entropy_sum, scored_positions_only


def examples(n: int = 8, seed: int = 0) -> list[Example]:
    return tokenize_pairs(tiny_pairs(n, seed), tiny_tokenizer(), max_length=32)


def lora_llama(seed: int = 0) -> torch.nn.Module:
    model = tiny_llama(seed)
    lorakit.inject(model, lorakit.LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj")))
    with torch.no_grad():  # non-zero B, so the adapter takes part in the forward
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return model


def loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with scored_positions_only(model, batch["labels"]) as labels:
        loss = cross_entropy_sum(model(**model_inputs(batch)).logits, labels)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_packed_rows_hold_every_token_once_with_restarting_positions_and_no_first_labels() -> None:
    rows = examples(5)
    for row_tokens in (None, 1, 10_000):  # default, one example per row, everything in one row
        batch = collate_packed(rows, row_tokens, pad_id=3)
        assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape
        assert "attention_mask" not in batch and int(batch["tokens"]) == sum(len(e.input_ids) for e in rows)
        real = []
        for ids, labels, positions in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                          batch["position_ids"].tolist(), strict=True):
            starts = [i for i, p in enumerate(positions) if p == 0]
            pieces = [ids[a:b] for a, b in zip(starts, starts[1:] + [len(ids)], strict=True)]
            assert all(labels[s] == IGNORE_INDEX for s in starts)
            real += [p for p in pieces if p.count(3) != len(p)]  # the padding segment is all pad ids
        assert sorted(real) == sorted(e.input_ids for e in rows)
    assert collate_packed(rows, 1)["input_ids"].shape[0] == len(rows)
    assert collate_packed(rows, 10_000)["input_ids"].shape[0] == 1


def test_packed_and_padded_batches_give_the_same_summed_loss_and_gradients() -> None:
    model = lora_llama()
    rows = examples(6)
    assert len({len(e.input_ids) for e in rows}) > 1  # padding exists in the padded batch
    padded_loss, padded_grads = loss_and_grads(model, collate(rows, pad_id=3))
    for row_tokens in (None, 10_000):  # several rows ending in padding segments; one row
        packed_loss, packed_grads = loss_and_grads(model, collate_packed(rows, row_tokens, pad_id=3))
        assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
        for a, b in zip(padded_grads, packed_grads, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_training_packed_follows_the_padded_run_step_for_step() -> None:
    train, dev = examples(16), examples(4, seed=1)
    losses = {}
    for batching in ("padded", "packed"):
        model = lora_llama()
        config = TrainConfig(steps=4, batch_size=4, lr=1e-2, batching=batching, precision="fp32")
        result = fit(model, train, config, dev, pad_id=3, progress=False)
        losses[batching] = [r.get("loss", r.get("dev_loss")) for r in result.records]
    assert losses["packed"] == pytest.approx(losses["padded"], rel=1e-4)


def test_auto_packs_a_llama_but_not_a_prefix_method_and_packed_is_refused_where_it_would_be_wrong() -> None:
    rows = examples(4)
    assert use_packing(lora_llama(), rows, "auto") and packs_correctly(lora_llama(), rows)
    prefixed = tiny_llama()
    METHODS["prefix-embed"].prepare(prefixed, lorakit.LoraConfig(rank=4), MethodOptions(prefix_length=3))
    assert not packs_correctly(prefixed, rows)
    assert not use_packing(prefixed, rows, "auto")
    with pytest.raises(ConfigError, match="does not keep packed examples apart.*padded"):
        use_packing(prefixed, rows, "packed")
    classification = [Example([1, 5, 6], [2]), Example([1, 7], [0])]
    assert not use_packing(lora_llama(), classification, "auto")
    with pytest.raises(ConfigError, match="one label per token"):
        use_packing(lora_llama(), classification, "packed")
