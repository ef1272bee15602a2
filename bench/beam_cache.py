"""E2E beam decoding with the prompt computed once per prompt vs once per beam (transformers' default); prints JSON.

lorakit.evaluate.decode gives generate() the prompts' keys and values computed once and repeated for the beams;
without it generate() repeats every prompt `beams` times before its first forward. Same model (a trained run's
adapter merged, or the base model), same dev inputs, the paper's decoding (beam 10), both ways interleaved per
batch; the texts must come out the same.

    python bench/beam_cache.py [--run runs/e2e-smollm2-lora] [--inputs 32] [--data ../shared/data/e2e]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from unittest import mock

from lorakit.evaluate import decode
from lorakit.evaluate.run import distinct_inputs, load_trained
from lorakit.train import tasks
from lorakit.train.config import DataConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run directory whose final adapter to use (default: the base model)")
    parser.add_argument("--inputs", type=int, default=32)
    parser.add_argument("--data", default="../shared/data/e2e")
    args = parser.parse_args()
    adapter = Path(args.run) / "final" / "adapter" if args.run else None
    model, tok = load_trained("smollm2-135m", adapter, "causal-lm", None, device="cpu")
    data = DataConfig(task="e2e", train=args.data)
    prompts, _ = distinct_inputs(tasks.read_split(data, "dev"))
    ids = decode.prompt_ids(prompts[: args.inputs], tok, 512)
    config = decode.DecodeConfig()
    times: dict[str, list[float]] = {"shared_prompt_cache": [], "prompt_per_beam": []}
    texts: dict[str, list[str]] = {k: [] for k in times}
    for k, start in enumerate(range(0, len(ids), config.batch_size)):
        batch = ids[start: start + config.batch_size]
        for way in (list(times) if k % 2 == 0 else list(reversed(times))):
            with mock.patch.object(decode, "_prompt_cache", lambda *a: {}) if way == "prompt_per_beam" else \
                    mock.patch.object(decode, "_prompt_cache", decode._prompt_cache):
                t = time.perf_counter()
                texts[way] += decode.generate(model, tok, batch, config, progress=False)
                times[way].append(time.perf_counter() - t)
    ratios = [a / b for a, b in zip(times["shared_prompt_cache"], times["prompt_per_beam"], strict=True)]
    print(json.dumps({
        "model": f"smollm2-135m + {adapter}" if adapter else "smollm2-135m", "inputs": len(ids),
        "batches": len(ratios), "beams": config.beams,
        "seconds": {k: round(sum(v), 2) for k, v in times.items()},
        "median_batch_ratio": round(statistics.median(ratios), 3),
        "same_texts": texts["shared_prompt_cache"] == texts["prompt_per_beam"],
        "texts_differing": sum(a != b for a, b in zip(*texts.values(), strict=True)),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
