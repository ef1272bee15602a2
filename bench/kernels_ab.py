"""The lean decode step with this checkout's C kernels (core/kernels.c) against another git revision's, in one engine;
prints JSON.

bench/lean_ab.py compares revisions of serve/llama.py but runs both against this checkout's kernels, so it cannot
see a change inside kernels.c. Here both builds of kernels.c are loaded side by side (each compiled into lorakit's
cache under its own hash) and one engine's decode steps alternate between them step by step, so the host's drift
falls on both alike. SmolLM2-135M in bf16, 8 rank-8 q,v adapters (random non-zero B), `--rows` requests; each
round prefills afresh and starts on the other build; the first 4 steps of a round are dropped. The two builds may
round differently, so the rows' tokens can drift apart between them: this measures time only (tests check the
numbers).

    python bench/kernels_ab.py --against HEAD [--rows 8 --rows 32] [--rounds 4] [--steps 56] [--repeat 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import serve as bench  # noqa: E402 (the serving benchmark's model, adapters and prompts)

from lorakit.core import kernel  # noqa: E402


def builds(rev: str, tmp: Path) -> dict:
    """{"this": the working tree's kernels, rev: that revision's}, each loaded as kernel._load loads it."""
    this = kernel._load()[0]
    source = subprocess.run(["git", "show", f"{rev}:src/lorakit/core/kernels.c"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    (tmp / "kernels.c").write_text(source)
    here = kernel.SOURCE
    kernel.SOURCE = tmp / "kernels.c"
    try:
        other = kernel._load()[0]
    except AttributeError as e:  # kernel._load binds every function this checkout's kernel.py calls
        raise SystemExit(f"{rev}'s kernels.c lacks a function this checkout calls ({e}); compare with a revision "
                         f"that has the same kernels") from e
    finally:
        kernel.SOURCE = here
    if this is None or other is None:
        raise SystemExit(f"the kernels are not available here: {kernel.status()}")
    return {"this": this, rev: other}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", default="HEAD", help="the git revision whose kernels.c to compare with")
    p.add_argument("--rows", type=int, action="append", help="requests in the batch (repeatable; default 8 and 32)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=56, help="decode steps per round")
    p.add_argument("--repeat", type=int, default=1,
                   help="each prompt repeated this many times (~12 tokens each), for longer contexts")
    args = p.parse_args()
    model, tok = bench.base_model(False, "bfloat16")
    texts = [" ".join([t] * args.repeat) for t in bench.prompts(32)]
    out: dict = {"against": args.against, "threads": torch.get_num_threads(), "repeat": args.repeat, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        libs = builds(args.against, Path(tmp))
        names = list(libs)
        dirs = bench.make_adapters(model, Path(tmp), bench.ADAPTERS)
        for rows in args.rows or [8, 32]:
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(args.rounds):
                with bench.running_engine(model, tok, dirs, texts, rows, bench.ADAPTERS, args.steps + 4) as engine:
                    for i in range(args.steps):
                        name = names[(i + r) % 2]
                        kernel._loaded = (libs[name], "")
                        t = time.perf_counter()
                        engine.step()
                        if i >= 4:
                            times[name].append(time.perf_counter() - t)
            kernel._loaded = (libs["this"], "")
            median = {n: 1000 * statistics.median(v) for n, v in times.items()}
            out["rows"][rows] = {"median_step_ms": {n: round(v, 2) for n, v in median.items()},
                                 "this_over_other": round(median["this"] / median[args.against], 3)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
