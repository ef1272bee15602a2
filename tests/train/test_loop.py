"""The loop's contracts: resume reproduces the uninterrupted run, NaN stops without touching the last checkpoint,
full fine-tuning runs through the same loop, and a run without run_dir writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tinytrain import tiny_llama, tiny_pairs, tiny_tokenizer

import lorakit
from lorakit.data import tokenize_pairs
from lorakit.train import TrainConfig, TrainingError, fit
from lorakit.train.checkpoint import CheckpointError, DamagedCheckpointWarning, checkpoints

PAD = 3


def examples(n: int, seed: int = 0):
    return tokenize_pairs(tiny_pairs(n, seed), tiny_tokenizer(), 32)


def lora_model(dropout: float = 0.1):
    model = tiny_llama()
    torch.manual_seed(1)
    return lorakit.inject(model, lorakit.LoraConfig(rank=4, alpha=8, dropout=dropout, targets=("q_proj", "v_proj")))


CONFIG = TrainConfig(steps=12, batch_size=8, grad_accum=2, lr=5e-3, warmup_steps=3, label_smoothing=0.1,
                     device="cpu", precision="fp32", save_every=3, eval_every=4, seed=7)


class SimulatedKill(Exception):
    pass


def train_losses(records) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_resuming_a_killed_run_reproduces_every_later_loss(tmp_path: Path) -> None:
    train, dev = examples(40), examples(8, 1)
    whole = fit(lora_model(), train, CONFIG, dev, tmp_path / "whole", pad_id=PAD, progress=False)

    def kill_at_step_8(record: dict) -> None:
        if record["split"] == "train" and record["step"] == 8:
            raise SimulatedKill  # like SIGKILL: no chance to write anything more

    with pytest.raises(SimulatedKill):
        fit(lora_model(), train, CONFIG, dev, tmp_path / "killed", pad_id=PAD, progress=False, on_log=kill_at_step_8)
    assert [p.name for p in checkpoints(tmp_path / "killed")] == ["step-00000003", "step-00000006"]

    # A fresh process would rebuild the model with a different LoRA init; resume must overwrite it.
    resumed = fit(lora_model(), train, CONFIG, dev, tmp_path / "killed", pad_id=PAD, progress=False, resume=True,
                  export=None)
    expected, got = train_losses(whole.records), train_losses(resumed.records)
    assert sorted(got) == list(range(1, 13))
    for step in range(7, 13):
        assert abs(got[step] - expected[step]) < 1e-6, (step, got[step], expected[step])
    logged = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["split"] == "train"] == list(range(1, 13))
    assert resumed.best == pytest.approx(whole.best, abs=1e-6)


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "optimizer.pt", "state.json",
                                     "adapter/adapter_model.safetensors"])
def test_resume_skips_a_truncated_newest_checkpoint_names_the_file_and_continues_from_the_older_one(
    tmp_path: Path, damaged: str
) -> None:
    train, dev = examples(40), examples(8, 1)
    whole = fit(lora_model(), train, CONFIG, dev, tmp_path / "whole", pad_id=PAD, progress=False)

    def kill_at_step_8(record: dict) -> None:
        if record["split"] == "train" and record["step"] == 8:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        fit(lora_model(), train, CONFIG, dev, tmp_path / "run", pad_id=PAD, progress=False, on_log=kill_at_step_8)
    newest = checkpoints(tmp_path / "run")[-1]
    data = (newest / damaged).read_bytes()
    (newest / damaged).write_bytes(data[: len(data) // 2])
    with pytest.warns(DamagedCheckpointWarning, match=rf"step-00000006 is damaged: {damaged} is .* bytes.*"
                                                      r"resuming from step-00000003"):
        resumed = fit(lora_model(), train, CONFIG, dev, tmp_path / "run", pad_id=PAD, progress=False, resume=True)
    expected, got = train_losses(whole.records), train_losses(resumed.records)
    for step in range(4, 13):
        assert abs(got[step] - expected[step]) < 1e-6, (step, got[step], expected[step])

    for path in checkpoints(tmp_path / "run"):  # one byte changed: the size still matches, the hash does not
        text = (path / "state.json").read_text()
        (path / "state.json").write_text(text.replace('"step": ', '"step":0'))
    with pytest.raises(CheckpointError, match=r"(?s)no intact checkpoint.*state.json does not hold the bytes"):
        fit(lora_model(), train, CONFIG, dev, tmp_path / "run", pad_id=PAD, progress=False, resume=True)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    model = lora_model()
    calls = {"n": 0}
    original = model.forward

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        calls["n"] += model.training  # training steps only (not the eval-mode packing check)
        if calls["n"] > 2 * 4:  # two micro-batches per step: steps 1-4 are fine, step 5 is NaN
            out.logits = out.logits * float("nan")
        return out

    model.forward = poisoned
    config = TrainConfig(steps=10, batch_size=8, grad_accum=2, device="cpu", precision="fp32", save_every=2)
    with pytest.raises(TrainingError, match="step 5.*last good checkpoint in .* is intact"):
        fit(model, examples(40), config, None, tmp_path, pad_id=PAD, progress=False)
    last = checkpoints(tmp_path)[-1]
    assert last.name == "step-00000004"
    state = json.loads((last / "state.json").read_text())
    assert state["step"] == 4
    lorakit.load_adapter(tiny_llama(), last / "adapter")  # intact and loadable
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(last / "trainable.safetensors").values())


def test_full_fine_tuning_trains_every_weight_through_the_same_loop(tmp_path: Path) -> None:
    from lorakit.methods import METHODS, MethodOptions

    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    export = METHODS["full"].prepare(model, lorakit.LoraConfig(), MethodOptions())
    config = TrainConfig(steps=3, batch_size=8, lr=1e-3, device="cpu", precision="fp32")
    result = fit(model, examples(16), config, None, tmp_path, pad_id=PAD, export=export, progress=False)
    assert result.steps == 3
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    reloaded = type(model).from_pretrained(tmp_path / "final" / "model")
    assert torch.equal(reloaded.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)


def test_training_without_a_run_dir_writes_nothing_and_lowers_the_loss(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(steps=30, batch_size=8, lr=1e-2, device="cpu", precision="fp32")
    result = fit(lora_model(dropout=0.0), examples(16), config, pad_id=PAD, progress=False)
    losses = train_losses(result.records)
    assert sum(losses[s] for s in range(26, 31)) < sum(losses[s] for s in range(1, 6))
    assert list(tmp_path.iterdir()) == []


def test_one_step_with_accumulation_equals_one_big_batch() -> None:
    big, accumulated = lora_model(dropout=0.0), lora_model(dropout=0.0)
    train = examples(8)
    fit(big, train, TrainConfig(steps=1, batch_size=8, device="cpu", precision="fp32"), pad_id=PAD, progress=False)
    fit(accumulated, train, TrainConfig(steps=1, batch_size=8, grad_accum=4, device="cpu", precision="fp32"),
        pad_id=PAD, progress=False)
    for (name, p), q in zip(big.named_parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
