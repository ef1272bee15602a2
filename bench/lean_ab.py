"""The lean forward's decode step, this checkout against another git revision's, side by side; prints JSON.

SmolLM2-135M in bf16 with 8 rank-8 q,v adapters (random non-zero B), `--rows` requests over the 8 adapters.
Two forwards of each version are built in the order A B B A (which of two otherwise identical forwards was built
first moved their step times by 3-6% here), each prefills the requests, then `--steps` decode steps run all four
in a rotating order; the first 5 steps are dropped. Reports each version's median step over its two forwards,
the ratio, and whether both versions chose the same greedy tokens at every step (they should when a change keeps
the arithmetic, and may not when it changes a summation order). With --prefills N, each forward first prefills
the requests' prompts, packed, N times in the same rotation (slots released; the LoRA tables of the rows are
built by the first), and the median prefill is reported the same way.

    python bench/lean_ab.py --against HEAD~1 [--rows 8] [--steps 40] [--prefills 8]
    python bench/lean_ab.py --against HEAD~1 --joining --steps 400
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import lorakit

sys.path.insert(0, str(Path(__file__).parent))
import serve as bench  # noqa: E402 (the serving benchmark's model and prompts)


def load_revision(rev: str | None, name: str):
    """lorakit.serve.llama, with the lorakit.serve.packed it imports, as they were at git revision `rev` (None: as
    in the working tree), as separate modules. Both versions are loaded this way: the imported package module
    measured 1-6% slower than an identical copy loaded from a file, a bias an A/B must not carry."""
    root = Path(__file__).resolve().parents[1]

    def load(module_name: str, file: str, edit=lambda text: text):
        if rev is None:
            source = (root / "src" / "lorakit" / "serve" / file).read_text()
        else:
            source = subprocess.run(["git", "show", f"{rev}:src/lorakit/serve/{file}"], cwd=root, check=True,
                                    capture_output=True, text=True).stdout
        path = Path(tempfile.mkdtemp()) / f"{module_name}.py"
        path.write_text(edit(source))
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module

    load(f"{name}_packed", "packed.py")
    return load(name, "llama.py", lambda text: text.replace("from lorakit.serve.packed import",
                                                            f"from {name}_packed import"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="git revision of the other version (e.g. HEAD~1)")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prefills", type=int, default=0,
                        help="also time this many prefills of the rows' prompts per forward, in rotation")
    parser.add_argument("--joining", action="store_true",
                        help="instead: engines whose rows change at most steps (see joining)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.joining:
        json.dump(joining(args.against, args.steps), sys.stdout, indent=2)
        print()
        return 0
    model, tok = bench.base_model(False, "bfloat16")
    for i in range(8):
        lorakit.inject(model, lorakit.LoraConfig(rank=8, alpha=16, targets=("q_proj", "v_proj")), f"a{i}")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    prompts = [tok.encode(t) for t in bench.prompts(args.rows)]
    names = [f"a{i % 8}" for i in range(args.rows)]
    versions = {"this": load_revision(None, "llama_this"), args.against: load_revision(args.against, "llama_other")}
    for module in versions.values():  # each module probes its kernels once; do that before building the timed ones
        module.LeanLlama(model)
    order = ["this", args.against, args.against, "this"]
    engines = [(key, versions[key].LeanLlama(model)) for key in order]
    prefill_times: dict[str, list[float]] = {k: [] for k in versions}
    for rep in range(args.prefills):
        for i in [(rep + j) % len(engines) for j in range(len(engines))]:
            key, engine = engines[i]
            t = time.perf_counter()
            slots, _ = engine.prefill(prompts, names)
            prefill_times[key].append(time.perf_counter() - t)
            for slot in slots:
                engine.release(slot)
    state = []
    for _, engine in engines:
        slots, logits = engine.prefill(prompts, names)
        state.append((slots, logits.argmax(-1).tolist()))
    times: dict[str, list[float]] = {k: [] for k in versions}
    same = True
    for step in range(args.steps):
        tokens: dict[str, list[int]] = {}
        for i in [(step + j) % len(engines) for j in range(len(engines))]:
            key, engine = engines[i]
            slots, last = state[i]
            t = time.perf_counter()
            logits = engine.decode(slots, last, names)
            if step >= 5:
                times[key].append(time.perf_counter() - t)
            chosen = logits.argmax(-1).tolist()
            same &= tokens.setdefault(key, chosen) == chosen
            state[i] = (slots, chosen)
        same &= len({tuple(t) for t in tokens.values()}) == 1
    medians = {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}
    out = {"rows": args.rows, "steps": args.steps, "median_step_ms": medians,
           "this_over_other": round(medians["this"] / medians[args.against], 3), "same_greedy_tokens": same}
    if args.prefills:
        prefill = {k: round(1000 * statistics.median(v), 2) for k, v in prefill_times.items()}
        out.update(prefills=args.prefills, median_prefill_ms=prefill,
                   prefill_this_over_other=round(prefill["this"] / prefill[args.against], 3))
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


def joining(against: str, steps: int) -> dict:
    """Two engines (lorakit.serve.engine.Engine over one adapter pool), one on each version's lean forward, stepped
    in alternation; before three steps in four a greedy 32-token request joins each (the prompts and 8 rank-8 q,v
    adapters in turn), so ~24 rows run and they change at most steps, as under traffic whose requests arrive and
    end at different times. Reports each version's mean and median step (prefill of the newcomer included) and
    the tokens/s of the steps after the first 50, and whether both engines gave every request the same tokens
    (requests still running at the end compared as far as both got)."""
    from lorakit.serve import engine as engine_module
    from lorakit.serve.pool import AdapterPool
    from lorakit.serve.sampling import SamplingParams

    model, tok = bench.base_model(False, "bfloat16")
    pool = AdapterPool(model)
    for i, d in enumerate(bench.make_adapters(model, Path(tempfile.mkdtemp()), 8)):
        pool.add(f"a{i}", d, trusted=True)
    prompts = [tok.encode(t) for t in bench.prompts(32)]
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    engines, built = {}, engine_module.LeanLlama
    try:
        for key, rev in (("this", None), (against, against)):
            engine_module.LeanLlama = load_revision(rev, f"llama_{'this' if rev is None else 'other'}").LeanLlama
            engines[key] = engine_module.Engine(model, tok, pool)
            lean = engines[key].lean
            if not hasattr(lean, "joins"):  # a forward from before running rows could join prefills
                lean.joins = False
                lean.prefill = lambda prompts, names, slots=None, prefill=lean.prefill: prefill(prompts, names)
    finally:
        engine_module.LeanLlama = built
    times: dict[str, list[float]] = {k: [] for k in engines}
    tokens: dict[str, dict[int, list[int]]] = {k: {} for k in engines}  # version -> request -> its tokens
    made = {k: 0 for k in engines}  # tokens generated in the timed steps
    for step in range(steps):
        for key in list(engines) if step % 2 else list(engines)[::-1]:
            engine = engines[key]
            if step % 4 != 3:
                out = tokens[key].setdefault(step, [])
                engine.submit(prompts[step % 32], f"a{step % 8}", params, lambda e, out=out: out.extend(e.token_ids))
            before = sum(map(len, tokens[key].values()))
            t = time.perf_counter()
            engine.step()
            if step >= 50:
                times[key].append(time.perf_counter() - t)
                made[key] += sum(map(len, tokens[key].values())) - before
    means = {k: round(1000 * statistics.mean(v), 2) for k, v in times.items()}
    medians = {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}
    return {"steps": steps, "rows_running_at_end": {k: len(e.running) for k, e in engines.items()},
            "mean_step_ms": means, "median_step_ms": medians,
            "this_over_other": round(means["this"] / means[against], 3),
            "tokens_per_s": {k: round(made[k] / sum(v), 1) for k, v in times.items()},
            "same_tokens": all(a[: len(b)] == b[: len(a)] for v in tokens.values()
                               for a, b in zip(v.values(), tokens["this"].values(), strict=True))}


if __name__ == "__main__":
    raise SystemExit(main())
