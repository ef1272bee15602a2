"""`lorakit quickstart`: LoRA-fine-tune SmolLM2-135M on the bundled restaurant set and show what changed.

The budget is a few minutes on 2 CPU cores, so the recipe is tuned to learn the task quickly: rank 8 on q,v (the
paper's choice of matrices), a high learning rate (2e-3, as LoRA tolerates; the paper uses 2e-4 for 5 epochs),
bf16 autocast where the CPU supports it, and greedy decoding for the before/after comparison.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import lorakit
from lorakit.core.atomic import atomic_write
from lorakit.data import TextPair, e2e_prompt, tokenize_pairs
from lorakit.evaluate import bleu
from lorakit.evaluate.config import DecodeConfig
from lorakit.evaluate.decode import generate, prompt_ids
from lorakit.quickstart import restaurants_path
from lorakit.quickstart.config import QuickstartConfig
from lorakit.train import TrainConfig, fit


def read_restaurants(path: Path | None = None) -> tuple[list[TextPair], list[TextPair]]:
    """(train, held-out) TextPairs from the bundled JSONL (prompt = the E2E-style MR with lorakit's E2E format)."""
    train, held = [], []
    for line in (path or restaurants_path()).read_text().splitlines():
        row = json.loads(line)
        pair = TextPair(prompt=e2e_prompt(row["mr"]), completion=row["ref"], group=row["mr"])
        (train if row["split"] == "train" else held).append(pair)
    return train, held


def run(config: QuickstartConfig | None = None, progress: bool = True) -> dict:
    """Train, compare, save; print as it goes and return the summary that is also written to summary.json."""
    from lorakit.models import load

    config = config or QuickstartConfig()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    print(f"Loading {config.model} ...", flush=True)
    model, tokenizer = load(config.model)
    train_pairs, held_pairs = read_restaurants()
    held_pairs = held_pairs[: config.heldout]
    examples = tokenize_pairs(train_pairs, tokenizer, max_length=128)
    prompts = prompt_ids([p.prompt for p in held_pairs], tokenizer, max_length=128)
    decode = DecodeConfig(beams=1, no_repeat_ngram_size=0, max_new_tokens=64, batch_size=12)

    print(f"Generating {len(held_pairs)} held-out descriptions with the base model ...", flush=True)
    before = generate(model, tokenizer, prompts, decode, progress=progress)

    lora = lorakit.LoraConfig(rank=config.rank, alpha=2.0 * config.rank, targets=("q_proj", "v_proj"))
    lorakit.inject(model, lora)
    report = lorakit.adapter_report(model, "default")
    print(f"LoRA r={config.rank} on q_proj,v_proj: {report.trainable:,} trainable of {report.total:,} parameters "
          f"({100 * report.trainable / report.total:.3f}%)", flush=True)
    train_config = TrainConfig(steps=config.steps, batch_size=8, lr=config.lr, warmup_steps=10, weight_decay=0.0,
                               seed=config.seed, device=config.device, log_every=10)
    result = fit(model, examples, train_config, pad_id=tokenizer.pad_token_id or 0, progress=progress)

    print("Generating again with the adapter ...", flush=True)
    after = generate(model, tokenizer, prompts, decode, progress=progress)
    refs = [[p.completion] for p in held_pairs]
    scores = {"before": 100 * bleu(before, refs), "after": 100 * bleu(after, refs)}

    out = Path(config.out_dir)
    adapter_dir = lorakit.save_adapter(model, out / "adapter")
    adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    base_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".lora_" not in n)
    summary = {
        "model": config.model, "steps": result.steps, "final_loss": result.loss,
        "trainable_params": report.trainable, "total_params": report.total,
        "bleu_heldout": scores, "heldout_records": len(held_pairs),
        "adapter_dir": str(adapter_dir), "adapter_bytes": adapter_bytes, "base_bytes": base_bytes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write(out / "summary.json", json.dumps(summary, indent=2).encode())
    _print_summary(held_pairs, before, after, summary, config.show)
    return summary


def _print_summary(held: list[TextPair], before: list[str], after: list[str], s: dict, show: int) -> None:
    print()
    for pair, b, a in list(zip(held, before, after, strict=True))[:show]:
        print(f"MR:         {pair.group}")
        print(f"base model: {b or '(empty)'}")
        print(f"with LoRA:  {a or '(empty)'}")
        print(f"reference:  {pair.completion}\n")
    pct = 100 * s["trainable_params"] / s["total_params"]
    print(f"trainable parameters: {s['trainable_params']:,} of {s['total_params']:,} ({pct:.3f}%)")
    print(f"BLEU on {s['heldout_records']} held-out records: base {s['bleu_heldout']['before']:.1f} -> "
          f"LoRA {s['bleu_heldout']['after']:.1f}")
    print(f"adapter saved (PEFT format) to {s['adapter_dir']}: {s['adapter_bytes'] / 1e6:.2f} MB, "
          f"{s['base_bytes'] / s['adapter_bytes']:.0f}x smaller than the base model's {s['base_bytes'] / 1e6:.0f} MB")
    print(f"total time: {s['seconds']:.0f} s")
