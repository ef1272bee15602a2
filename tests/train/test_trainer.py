"""A lorakit-wrapped model trains inside transformers.Trainer; LorakitCallback saves the adapter in PEFT format."""

from __future__ import annotations

from pathlib import Path

import torch
from tinytrain import tiny_llama, tiny_pairs, tiny_tokenizer
from transformers import Trainer, TrainingArguments

import lorakit
from lorakit.data import collate, tokenize_pairs
from lorakit.train.hf import LorakitCallback


def test_a_wrapped_model_trains_in_hf_trainer_and_its_adapter_saves_in_peft_format(tmp_path: Path) -> None:
    from peft import PeftModel

    model = lorakit.inject(tiny_llama(), lorakit.LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj")))
    examples = tokenize_pairs(tiny_pairs(16), tiny_tokenizer(), 32)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8, learning_rate=2e-2, save_steps=6,
        logging_steps=1, report_to=[], use_cpu=True, remove_unused_columns=False, seed=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples, callbacks=[LorakitCallback()],
                      data_collator=lambda batch: collate(batch, pad_id=3))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert (tmp_path / "checkpoint-6" / "adapter_config.json").is_file()

    ids = torch.tensor([examples[0].input_ids])
    model.eval()
    with torch.no_grad():
        trained = model(ids).logits
        peft_model = PeftModel.from_pretrained(tiny_llama(), str(tmp_path)).eval()
        torch.testing.assert_close(peft_model(ids).logits, trained, atol=1e-5, rtol=1e-5)
