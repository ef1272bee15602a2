"""A lorakit-wrapped model trains inside transformers.Trainer: LorakitTrainer saves PEFT adapters, resumes from
them as if never interrupted, and reloads the best one; a plain Trainer refuses to save what would load broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinytrain import tiny_llama, tiny_pairs, tiny_tokenizer
from transformers import Trainer, TrainingArguments

import lorakit
from lorakit.data import collate, tokenize_pairs
from lorakit.train.hf import LorakitTrainer

LORA = lorakit.LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj"))
EXAMPLES = tokenize_pairs(tiny_pairs(16), tiny_tokenizer(), 32)


def wrapped(seed: int = 0):
    model = tiny_llama()
    torch.manual_seed(seed)  # the factors' init: a different seed starts the adapter elsewhere
    return lorakit.inject(model, LORA)


def trainer(model, out: Path, cls: type[Trainer] = LorakitTrainer, eval_dataset=None, **kw) -> Trainer:
    args = TrainingArguments(**{
        "output_dir": str(out), "max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 2e-2,
        "save_steps": 3, "logging_steps": 1, "report_to": [], "use_cpu": True, "seed": 0, "disable_tqdm": True,
        **kw,
    })
    return cls(model=model, args=args, train_dataset=EXAMPLES, eval_dataset=eval_dataset,
               data_collator=lambda batch: collate(batch, pad_id=3))


def factors(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor([EXAMPLES[0].input_ids])).logits


def test_save_model_writes_a_peft_adapter_that_peft_and_lorakit_load_with_the_trained_logits(tmp_path):
    from peft import PeftModel

    model = wrapped()
    t = trainer(model, tmp_path / "run")
    t.train()
    losses = [entry["loss"] for entry in t.state.log_history if "loss" in entry]
    assert sum(losses[-2:]) < sum(losses[:2])
    t.save_model(str(tmp_path / "final"))
    for directory in (tmp_path / "final", tmp_path / "run" / "checkpoint-3", tmp_path / "run" / "checkpoint-6"):
        files = {p.name for p in directory.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert not files & {"model.safetensors", "config.json"}
    assert all(k.startswith("base_model.model.") and ".lora_" in k
               for k in load_file(tmp_path / "final" / "adapter_model.safetensors"))
    trained = logits(model)
    with torch.no_grad():
        assert not torch.allclose(logits(tiny_llama()), trained, atol=1e-3)
    peft_model = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "final"))
    torch.testing.assert_close(logits(peft_model), trained, atol=1e-5, rtol=1e-5)
    ours = tiny_llama()
    lorakit.load_adapter(ours, tmp_path / "final")
    assert torch.equal(logits(ours), trained)


def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    uninterrupted = wrapped()
    trainer(uninterrupted, tmp_path / "a").train()
    shutil.copytree(tmp_path / "a" / "checkpoint-3", tmp_path / "b" / "checkpoint-3")  # a run stopped after step 3
    resumed = wrapped(seed=1)  # other initial factors: only the checkpoint can make the result match
    t = trainer(resumed, tmp_path / "b")
    t.train(resume_from_checkpoint=True)
    assert t.state.global_step == 6
    want, got = factors(uninterrupted), factors(resumed)
    assert want.keys() == got.keys() and all(torch.equal(want[n], got[n]) for n in want)


def test_load_best_model_at_end_restores_the_best_checkpoints_adapter(tmp_path):
    model = wrapped()
    # greater_is_better on the loss makes the first checkpoint the "best", so the reload visibly changes the model.
    t = trainer(model, tmp_path, eval_strategy="steps", eval_steps=3, load_best_model_at_end=True,
                metric_for_best_model="loss", greater_is_better=True, eval_dataset=EXAMPLES[:4])
    t.train()
    assert Path(t.state.best_model_checkpoint).name == "checkpoint-3"
    best = tiny_llama()
    lorakit.load_adapter(best, tmp_path / "checkpoint-3")
    last = tiny_llama()
    lorakit.load_adapter(last, tmp_path / "checkpoint-6")
    assert torch.equal(logits(model), logits(best)) and not torch.equal(logits(model), logits(last))


def test_a_plain_trainer_refuses_to_save_a_wrapped_model_and_names_lorakit_trainer(tmp_path):
    t = trainer(wrapped(), tmp_path, cls=Trainer)
    with pytest.raises(lorakit.AdapterError, match="LorakitTrainer"):
        t.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "model.safetensors").exists()


def test_lorakit_trainer_refuses_a_model_without_adapters_and_a_checkpoint_without_one(tmp_path):
    with pytest.raises(lorakit.AdapterError, match="lorakit.inject"):
        trainer(tiny_llama(), tmp_path, cls=LorakitTrainer)
    plain = tmp_path / "checkpoint-1"
    plain.mkdir()
    tiny_llama().save_pretrained(plain)
    with pytest.raises(lorakit.AdapterFileError, match="holds no adapter"):
        trainer(wrapped(), tmp_path).train(resume_from_checkpoint=str(plain))
