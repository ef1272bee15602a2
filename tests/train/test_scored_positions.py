"""The loop projects only scored positions through the output head: same loss and gradients as full logits, for
plain LoRA, for methods that prepend prefix positions, and for GPT-2's tied head."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_gpt2
from tinytrain import tiny_llama, tiny_pairs, tiny_tokenizer

import lorakit
from lorakit.core.config import LoraConfig
from lorakit.data import collate, model_inputs, tokenize_pairs
from lorakit.methods import METHODS, MethodOptions
from lorakit.train.loop import cross_entropy_sum, scored_positions_only

PAD = 3


def batch():
    examples = tokenize_pairs(tiny_pairs(6, seed=2), tiny_tokenizer(), 32)
    return collate(examples, PAD)


def loss_and_grads(model, data, only_scored: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    if only_scored:
        with scored_positions_only(model, data["labels"]) as labels:
            logits = model(**model_inputs(data)).logits
    else:
        labels = data["labels"]
        logits = model(**model_inputs(data)).logits
    loss = cross_entropy_sum(logits, labels, label_smoothing=0.1)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("method", ["lora", "prefix-embed", "prefix-layer", "full"])
@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_scoring_only_labeled_positions_gives_the_full_logits_loss_and_gradients(make, method):
    model = make()
    torch.manual_seed(4)
    if method == "lora":
        targets = ("q_proj", "v_proj") if make is tiny_llama else ("c_attn",)
        lorakit.inject(model, lorakit.LoraConfig(rank=4, alpha=8, targets=targets))
    elif method != "full":
        METHODS[method].prepare(model, LoraConfig(), MethodOptions(prefix_length=3))
    with torch.no_grad():  # non-zero B, so LoRA's gradients reach A as well
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.eval()  # GPT-2's dropout would make the two passes differ; gradients flow in eval mode too
    data = batch()
    assert (data["labels"] == -100).any(), "the batch must have unscored positions (prompt, padding)"
    full_loss, full_grads = loss_and_grads(model, data, only_scored=False)
    loss, grads = loss_and_grads(model, data, only_scored=True)
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-5)
    assert len(grads) == len(full_grads) > 0
    for g, h in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)


def test_the_hook_is_gone_afterwards_and_class_labels_pass_through():
    model = tiny_llama()
    data = batch()
    with scored_positions_only(model, data["labels"]) as labels:
        assert labels.dim() == 1 and labels.numel() == int((data["labels"][:, 1:] != -100).sum())
    assert model(**model_inputs(data)).logits.shape == (*data["input_ids"].shape, 26)
    classes = torch.tensor([0, 1])
    with scored_positions_only(model, classes) as labels:
        assert labels is classes
