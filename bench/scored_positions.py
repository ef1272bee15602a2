"""What scoring only the labeled positions saves in a LoRA training step on real E2E batches; prints JSON.

The loop (train.loop.scored_positions_only) projects only the positions whose next token is a label through the
49,152-row output head; prompt and padding positions skip it and its float32 log-softmax. This times one forward
+ backward of SmolLM2-135M with LoRA in the E2E config's setting (r=4 on q,v, bf16 autocast, frozen weights in
bf16, label smoothing 0.1) on batches of 8 training records, with and without that, interleaved on the same
batches; medians of per-round times and of per-round ratios.

    python bench/scored_positions.py [--repeats 12] [--data ../shared/data/e2e]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

import lorakit
from lorakit.data import collate, model_inputs
from lorakit.models import load
from lorakit.train import tasks
from lorakit.train.config import DataConfig
from lorakit.train.loop import cross_entropy_sum, scored_positions_only
from lorakit.train.precision import frozen_linears_to


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--data", default="../shared/data/e2e")
    args = parser.parse_args()
    model, tok = load("smollm2-135m")
    lorakit.inject(model, lorakit.LoraConfig(rank=4, alpha=32, dropout=0.1, targets=("q_proj", "v_proj")))
    frozen_linears_to(model, torch.bfloat16)
    model.train()
    data = DataConfig(task="e2e", train=args.data, max_length=128)
    examples = tasks.tokenize(data, tasks.read_split(data, "train")[:64], tok)
    batches = [collate(examples[i:i + 8], tok.pad_token_id) for i in range(0, 64, 8)]

    def step(batch: dict, only_scored: bool) -> float:
        scoring = (scored_positions_only(model, batch["labels"]) if only_scored
                   else contextlib.nullcontext(batch["labels"]))
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16), scoring as labels:
            loss = cross_entropy_sum(model(**model_inputs(batch)).logits, labels, 0.1)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.repeats):
        batch = batches[r % len(batches)]
        for only in (False, True) if r % 2 else (True, False):  # alternate which goes first
            times[only].append(step(batch, only))
    ratios = [a / b for a, b in zip(times[True], times[False], strict=True)]
    print(json.dumps({
        "batch": "8 E2E training records",
        "tokens_per_batch": statistics.mean(int(b["attention_mask"].sum()) for b in batches),
        "scored_per_batch": statistics.mean(int((b["labels"][:, 1:] != -100).sum()) for b in batches),
        "padded_positions_per_batch": statistics.mean(b["input_ids"].numel() for b in batches),
        "full_logits_step_ms": round(1000 * statistics.median(times[False]), 1),
        "scored_only_step_ms": round(1000 * statistics.median(times[True]), 1),
        "median_ratio": round(statistics.median(ratios), 3),
        "repeats": args.repeats,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
