"""The measurements behind the lean bf16 forward's design (src/lorakit/serve/llama.py); prints JSON.

On SmolLM2-135M's weight shapes (q,k,v fused 960x576, o 576x576, gate,up fused 3072x576, down 576x1536, head
49152x576), bf16, random weights, each shape 30 times over (the head once) so they come from memory as in a
decode step:
  speed        F.linear against the oneDNN-prepacked product, 8 rows (ms per pass over every weight)
  rows_cost    a pass with the prepacked products at 1, 8, 16, 24, 32 rows: what padding a step to 32 rows costs
  invariance   per shape, the row counts m in 1..64 at which some row of an m-row product differs from that row
               computed alone (random inputs; oneDNN switches kernels by row count)
  threads      the same pass on the main thread and on a second thread started after the main one has run
               parallel work (libgomp then stops spin-waiting for the second thread's team)

    python bench/lean_products.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import torch
import torch.nn.functional as F

from lorakit.serve.packed import Packed

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "head": (49152, 576)}


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(*shape, generator=g).to(torch.bfloat16) * 0.05
               for name, shape in SHAPES.items() for _ in range(1 if name == "head" else 30)]
    packed = [Packed(w) for w in weights]
    inputs = {rows: {k: torch.randn(rows, k, generator=g).to(torch.bfloat16) for k in (576, 1536)}
              for rows in (1, 8, 16, 24, 32)}

    def plain_pass(rows: int = 8) -> None:
        for w in weights:
            F.linear(inputs[rows][w.shape[1]], w)

    def packed_pass(rows: int = 8) -> None:
        for w, p in zip(weights, packed, strict=True):
            p.product(inputs[rows][w.shape[1]])

    out: dict = {"threads": torch.get_num_threads(),
                 "weights_mb": round(sum(w.numel() * 2 for w in weights) / 2**20, 1)}
    out["speed"] = {"F.linear_ms": median_ms(plain_pass, args.repeats),
                    "prepacked_ms": median_ms(packed_pass, args.repeats)}
    out["speed"]["speedup"] = round(out["speed"]["F.linear_ms"] / out["speed"]["prepacked_ms"], 2)
    # Interleaved: every round times each row count once, so drift on the shared machine hits them alike.
    times: dict[int, list[float]] = {rows: [] for rows in inputs}
    for _ in range(args.repeats):
        for rows in inputs:
            start = time.perf_counter()
            packed_pass(rows)
            times[rows].append(time.perf_counter() - start)
    out["rows_cost"] = {str(rows): round(1000 * statistics.median(t), 2) for rows, t in times.items()}

    invariance = {}
    for name, shape in SHAPES.items():
        p = Packed(torch.randn(*shape, generator=g).to(torch.bfloat16) * 0.05)
        x = torch.randn(64, shape[1], generator=g).to(torch.bfloat16)
        alone = torch.cat([p.product(x[i : i + 1]) for i in range(64)])
        invariance[name] = [m for m in range(1, 65) if not torch.equal(p.product(x[:m]), alone[:m])]
    out["invariance_rows_that_differ"] = {k: (f"{v[0]}..{v[-1]} ({len(v)} counts)" if v else "none")
                                          for k, v in invariance.items()}

    main_ms = median_ms(packed_pass, args.repeats)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(ms=median_ms(packed_pass, args.repeats)))
    thread.start()
    thread.join()
    out["threads_8_rows"] = {"main_thread_ms": main_ms, "second_thread_ms": result["ms"],
                             "ratio": round(result["ms"] / main_ms, 2)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
