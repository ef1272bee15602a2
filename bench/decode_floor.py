"""How fast can one decode step of SmolLM2-135M be on this machine? Prints JSON.

The base model alone (no adapters, no scheduler), bf16 weights, a transformers StaticCache of 128 positions, 8 rows
(the issue's 8 concurrent requests): the median step with the eager HF forward and with the same forward under
torch.compile (fixed shapes, compiled once). Against the bytes of weights a step must read, this bounds what any
serving engine built on the HF model could reach here before adapters, scheduling and HTTP are added.

    python bench/decode_floor.py [--rows 8] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import StaticCache

from lorakit.models import load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    model, _ = load("smollm2-135m")
    model = model.to(torch.bfloat16).eval()
    prompt = 24
    cache = StaticCache(config=model.config, max_cache_len=prompt + 3 * args.steps + 8)
    ids = torch.randint(100, 1000, (args.rows, prompt), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = model(input_ids=ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(prompt))
    tokens = first.logits[:, -1].argmax(-1, keepdim=True)
    position = prompt

    def step(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return model(input_ids=t, past_key_values=cache, use_cache=True, cache_position=pos, logits_to_keep=1).logits

    def median_ms(fn) -> float:
        nonlocal tokens, position
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            with torch.no_grad():
                logits = fn(tokens, torch.tensor([position]))
            times.append(time.perf_counter() - start)
            tokens, position = logits[:, -1].argmax(-1, keepdim=True), position + 1
        return round(1000 * statistics.median(times[2:]), 1)

    eager = median_ms(step)
    compiled = torch.compile(step, dynamic=False)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(tokens, torch.tensor([position]))
    compile_s = time.perf_counter() - start
    position += 1
    fast = median_ms(compiled)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(json.dumps({
        "rows": args.rows, "dtype": "bfloat16", "weights_mb": round(weights_mb, 1),
        "eager_step_ms": eager, "compiled_step_ms": fast, "compile_seconds": round(compile_s, 1),
        "eager_tokens_per_s": round(1000 * args.rows / eager, 1),
        "compiled_tokens_per_s": round(1000 * args.rows / fast, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
