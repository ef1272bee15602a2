"""TrainConfig.frozen_bf16: frozen Linear weights stored in bf16 leave bf16-autocast training unchanged."""

from __future__ import annotations

import pytest
import torch
from tinytrain import tiny_llama, tiny_pairs, tiny_tokenizer

import lorakit
from lorakit import ConfigError
from lorakit.data import tokenize_pairs
from lorakit.train import TrainConfig, fit

PAD = 3


def losses(frozen_bf16: bool) -> tuple[list[float], torch.nn.Module]:
    torch.manual_seed(1)
    model = lorakit.inject(tiny_llama(), lorakit.LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj")))
    config = TrainConfig(steps=6, batch_size=4, lr=5e-3, device="cpu", precision="bf16", seed=3,
                         frozen_bf16=frozen_bf16)
    result = fit(model, tokenize_pairs(tiny_pairs(16), tiny_tokenizer(), 32), config, pad_id=PAD, progress=False)
    return [r["loss"] for r in result.records if r["split"] == "train"], model


def test_frozen_bf16_weights_give_the_same_losses_as_bf16_autocast():
    plain, _ = losses(False)
    frozen, model = losses(True)
    assert frozen == pytest.approx(plain, abs=1e-6)
    q = model.model.layers[0].self_attn.q_proj
    assert q.base_layer.weight.dtype == torch.bfloat16 and q.lora_A["default"].dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.float32


def test_frozen_bf16_with_fp32_precision_is_refused():
    with pytest.raises(ConfigError, match="frozen_bf16 needs bf16 precision"):
        TrainConfig(precision="fp32", frozen_bf16=True)
