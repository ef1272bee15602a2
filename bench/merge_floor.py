"""Where a merge's time goes: SmolLM2-135M's q,v shapes (60 weights, 53 MB fp32), rank 8, out of cache.

Times ways of adding s·B·A into every W, each after touching 192 MB of other memory (as after another model's
work), interleaved over rounds, medians:
  fused          lorakit's fused kernel (core/kernel.py): every row of every W read once, its update added, written
                 back, in one call on torch's threads (what lorakit.merge does for fp32 CPU weights)
  addmm          W.addmm_(B, A, alpha=s) per layer, one Python thread (lorakit.merge's fallback)
  mm_only        B·A into an L2-resident buffer, W untouched: the rank-8 GEMM's compute alone
  mm_then_add    B·A into that buffer, then W.add_(buffer, alpha=s)
  rows64         addmm_ on 64-row slices of W
  floor          W.mul_(1.0): one read and one write of every W, the least any in-place merge can cost
  python_threads addmm_ split over 2 Python threads (lorakit before session 4); timed last, after the others,
                 because the extra OpenMP teams it starts keep spinning and slow whatever runs next

    python bench/merge_floor.py [--rounds 21]    # prints JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from lorakit.core import kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    torch.manual_seed(0)
    shapes = [(576, 576), (192, 576)] * 30
    ws = [torch.randn(o, i) for o, i in shapes]
    bs = [torch.randn(o, 8) * 0.01 for o, _ in shapes]
    as_ = [torch.randn(8, i) * 0.01 for _, i in shapes]
    other = torch.randn(48 * 1024 * 1024)  # 192 MB
    buf = torch.empty(576 * 576)

    run = kernel.fused([(w, b, a, 0.5) for w, b, a in zip(ws, bs, as_, strict=True)])

    def fused() -> None:
        run(1.0)

    def addmm() -> None:
        for w, b, a in zip(ws, bs, as_, strict=True):
            w.addmm_(b, a, alpha=0.5)

    def mm_only() -> None:
        for w, b, a in zip(ws, bs, as_, strict=True):
            torch.mm(b, a, out=buf[: w.numel()].view_as(w))

    def mm_then_add() -> None:
        for w, b, a in zip(ws, bs, as_, strict=True):
            d = buf[: w.numel()].view_as(w)
            torch.mm(b, a, out=d)
            w.add_(d, alpha=0.5)

    def rows64() -> None:
        for w, b, a in zip(ws, bs, as_, strict=True):
            for s in range(0, w.shape[0], 64):
                w[s:s + 64].addmm_(b[s:s + 64], a, alpha=0.5)

    def floor() -> None:
        for w in ws:
            w.mul_(1.0)

    pool = ThreadPoolExecutor(2)

    def python_threads() -> None:
        def run(k: int) -> None:
            with torch.no_grad():
                for j in range(k, len(ws), 2):
                    ws[j].addmm_(bs[j], as_[j], alpha=0.5)
        list(pool.map(run, [0, 1]))

    def measure(variants: dict) -> dict:
        times: dict[str, list[float]] = {k: [] for k in variants}
        with torch.no_grad():
            for _ in range(args.rounds):
                for k, fn in variants.items():
                    other.mul_(1.0)
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
        return {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}

    variants = {"fused": fused} if run is not None else {}
    variants.update(addmm=addmm, mm_only=mm_only, mm_then_add=mm_then_add, rows64=rows64, floor=floor)
    out = {"threads": torch.get_num_threads(), "rounds": args.rounds, "torch": torch.__version__,
           "kernel": kernel.status(), "ms": measure(variants)}
    out["ms"].update(measure({"python_threads": python_threads}))
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
