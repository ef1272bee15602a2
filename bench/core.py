"""lorakit core vs HF PEFT, side by side in one process: forward overhead, mixed batches, load, switch, merge.

Model: SmolLM2-135M's shape (random weights by default; --real loads the built-in smollm2-135m), fp32, rank 8 on
q_proj,v_proj. Every measurement interleaves lorakit and PEFT in the same round and reports the median over rounds
of the per-round ratio, because this machine is shared and noisy: absolute times are context only.

    python bench/core.py [--rounds 7] [--real] [--device cuda]    # prints JSON

On a GPU (--device cuda; fp32 with TF32 off, as on the CPU) every timing synchronizes before and after.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import lorakit

warnings.filterwarnings("ignore")
ADAPTERS = 8


def smollm_shape():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0)
    return LlamaForCausalLM(cfg).eval()


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn, *args, repeat: int = 1, **kwargs) -> float:
    sync()
    t = time.perf_counter()
    for _ in range(repeat):
        fn(*args, **kwargs)
    sync()
    return (time.perf_counter() - t) / repeat


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def make_adapters(base, root: Path) -> list[Path]:
    """Save 8 rank-8 q,v adapters with non-zero B (PEFT format) to load in both libraries."""
    dirs = []
    for i in range(ADAPTERS):
        m = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(rank=8, alpha=16, targets=("q_proj", "v_proj")))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if ".lora_B." in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.01)
        dirs.append(lorakit.save_adapter(m, root / f"a{i}"))
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--real", action="store_true", help="use the built-in smollm2-135m weights")
    ap.add_argument("--device", default="cpu", help="cpu (the issue's setting) or cuda")
    ap.add_argument("--sections", default="forward,mixed,load,switch,merge",
                    help="comma-separated subset of forward,mixed,load,switch,merge to measure (default all)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    torch.set_num_threads(2)
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    import peft

    if args.real:
        from lorakit.models import load

        base = load("smollm2-135m")[0].eval()
    else:
        base = smollm_shape()
    base.to(DEVICE)
    tmp = Path(tempfile.mkdtemp())
    dirs = make_adapters(base, tmp)
    out: dict = {"model": "smollm2-135m" if args.real else "smollm2-135m-shape (random weights)",
                 "dtype": "float32", "threads": torch.get_num_threads(), "rounds": args.rounds,
                 "torch": torch.__version__, "peft": peft.__version__, "device": str(DEVICE)}
    if DEVICE.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(DEVICE)

    # Models: base, lorakit with 8 adapters, PEFT with the same 8 adapters.
    lk = copy.deepcopy(base)
    for i, d in enumerate(dirs):
        lorakit.load_adapter(lk, d, f"a{i}")
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(dirs[0]), adapter_name="a0")
    for i, d in enumerate(dirs[1:], start=1):
        pm.load_adapter(str(d), adapter_name=f"a{i}")
    pm.eval()
    lorakit.set_active(lk, "a0")
    pm.set_adapter("a0")

    # Two ways to measure the unmerged overhead. Against `base`, a separate model (the way): but the
    # wrapped models are copies, and where a copy's memory lies moves its forward by a few percent, so a plain
    # copy of the base with no adapter code runs alongside as a control. And on the same weights: lorakit's model
    # with its adapter active against the same model inside lorakit.disable_adapters, which leaves the LoRA
    # arithmetic and each call's adapter bookkeeping. (Not for PEFT: entering and leaving its disable_adapter()
    # walks every module: its disabled batch-1 forward measured 12-13% slower than its enabled one here.)
    control = copy.deepcopy(base)
    names = [f"a{i}" for i in range(ADAPTERS)]

    def lk_off(x: torch.Tensor) -> None:
        with lorakit.disable_adapters(lk):
            lk(x)

    g = torch.Generator().manual_seed(0)
    for batch in (8, 1) if "forward" in sections else ():
        x = torch.randint(0, 49152, (batch, 128), generator=g).to(DEVICE)
        r_lk, r_pf, r_ctl, t_base, s_lk = [], [], [], [], []
        with torch.inference_mode():
            for f in (base, lk, pm, control, lk_off):
                f(x)  # warm-up
            for _ in range(args.rounds):
                tb = timed(base, x)
                tl, tl_off = timed(lk, x), timed(lk_off, x)
                tp = timed(pm, x)
                tc = timed(control, x)
                tb2 = timed(base, x)
                b = (tb + tb2) / 2
                t_base.append(b)
                r_lk.append(tl / b)
                r_pf.append(tp / b)
                r_ctl.append(tc / b)
                s_lk.append(tl / tl_off)
        out[f"unmerged_overhead_b{batch}x128"] = {
            "base_ms": round(1000 * med(t_base), 1),
            "lorakit_pct": round(100 * (med(r_lk) - 1), 2),
            "peft_pct": round(100 * (med(r_pf) - 1), 2),
            "plain_copy_of_the_base_pct": round(100 * (med(r_ctl) - 1), 2),
            "same_weights_lorakit_pct": round(100 * (med(s_lk) - 1), 2),
        }

    # A batch of 8 rows, each with a different adapter, vs the same batch on one adapter.
    if "mixed" in sections:
        x = torch.randint(0, 49152, (8, 128), generator=g).to(DEVICE)
        r_lk, r_pf = [], []
        with torch.inference_mode():
            with lorakit.adapter_rows(lk, names):
                lk(x)
            pm(x, adapter_names=names)
            for _ in range(args.rounds):
                t1 = timed(lk, x)
                with lorakit.adapter_rows(lk, names):
                    t8 = timed(lk, x)
                p1 = timed(pm, x)
                p8 = timed(pm, x, adapter_names=names)
                r_lk.append(t8 / t1)
                r_pf.append(p8 / p1)
        out["mixed_8_adapters_vs_one_b8x128"] = {"lorakit_pct": round(100 * (med(r_lk) - 1), 2),
                                                  "peft_pct": round(100 * (med(r_pf) - 1), 2)}

    # Loading: the first adapter (wrapping included) and each further one.
    if "load" in sections:
        first_lk, first_pf, more_lk, more_pf = [], [], [], []
        for _ in range(args.rounds):
            m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
            first_lk.append(timed(lorakit.load_adapter, m1, dirs[0], "a0"))
            t = time.perf_counter()
            p = peft.PeftModel.from_pretrained(m2, str(dirs[0]), adapter_name="a0")
            first_pf.append(time.perf_counter() - t)
            more_lk.append(med([timed(lorakit.load_adapter, m1, dirs[i], f"a{i}") for i in range(1, 4)]))
            more_pf.append(med([timed(p.load_adapter, str(dirs[i]), adapter_name=f"a{i}") for i in range(1, 4)]))
        out["load_adapter_ms"] = {
            "lorakit_first": round(1000 * med(first_lk), 2), "peft_first": round(1000 * med(first_pf), 2),
            "lorakit_further": round(1000 * med(more_lk), 2), "peft_further": round(1000 * med(more_pf), 2),
            "further_ratio": round(med([a / b for a, b in zip(more_lk, more_pf, strict=True)]), 4),
        }

    # Switching the active adapter.
    if "switch" in sections:
        sw_lk, sw_pf = [], []
        for _ in range(args.rounds):
            sw_lk.append(timed(lambda: [lorakit.set_active(lk, n) for n in names], repeat=20) / len(names))
            sw_pf.append(timed(lambda: [pm.set_adapter(n) for n in names], repeat=2) / len(names))
        out["switch_ms"] = {"lorakit": round(1000 * med(sw_lk), 4), "peft": round(1000 * med(sw_pf), 3),
                            "ratio": round(med([a / b for a, b in zip(sw_lk, sw_pf, strict=True)]), 5)}

    # Merging in place and back; then merge-and-unload.
    if "merge" in sections:
        lorakit.set_active(lk, "a0")
        pm.set_adapter("a0")
        w0 = {n: p.detach().clone() for n, p in lk.named_parameters() if "base_layer" in n}
        mg_lk, mg_lk_unsafe, mg_pf, mg_pf2, un_lk, un_pf, mu_lk, mu_pf = [], [], [], [], [], [], [], []
        for _ in range(args.rounds):
            # Each timed merge starts right after the other library's merge and unmerge, so both find the same
            # kind of cache (the other model's weights were touched last), checked and unchecked alike.
            mg_lk.append(timed(lorakit.merge, lk, "a0", safe=True))
            un_lk.append(timed(lorakit.unmerge, lk))
            mg_pf.append(timed(pm.merge_adapter))
            un_pf.append(timed(pm.unmerge_adapter))
            mg_lk_unsafe.append(timed(lorakit.merge, lk, "a0", safe=False))
            lorakit.unmerge(lk)
            mg_pf2.append(timed(pm.merge_adapter))
            pm.unmerge_adapter()
        # The floor for any in-place merge: one read and one write of every adapted weight (W.mul_(1.0)), back to
        # back (warm), and cold: right after PEFT's merge and unmerge, where each lorakit merge above starts.
        adapted = [m.base_layer.weight for _, m in lorakit.core.inject.wrappers(lk) if "a0" in m.lora_A]
        cold = []
        with torch.no_grad():
            floor = med([timed(lambda: [w.mul_(1.0) for w in adapted]) for _ in range(args.rounds)])
            for _ in range(args.rounds):
                pm.merge_adapter()
                pm.unmerge_adapter()
                cold.append(timed(lambda: [w.mul_(1.0) for w in adapted]))
        drift = max((p - w0[n]).abs().max().item() for n, p in lk.named_parameters() if n in w0)
        for _ in range(max(3, args.rounds // 2)):
            a, b = copy.deepcopy(lk), copy.deepcopy(pm)
            mu_lk.append(timed(lambda m: lorakit.unwrap(lorakit.merge(m, "a0")), a))
            mu_pf.append(timed(b.merge_and_unload))
        out["merge_ms"] = {
            "lorakit_merge_safe": round(1000 * med(mg_lk), 2),
            "lorakit_merge_unsafe": round(1000 * med(mg_lk_unsafe), 2),
            "peft_merge_adapter": round(1000 * med(mg_pf), 2),
            "ratio_safe": round(med([a / b for a, b in zip(mg_lk, mg_pf, strict=True)]), 4),
            "ratio_unsafe": round(med([a / b for a, b in zip(mg_lk_unsafe, mg_pf2, strict=True)]), 4),
            "lorakit_unmerge": round(1000 * med(un_lk), 2), "peft_unmerge_adapter": round(1000 * med(un_pf), 2),
            "lorakit_merge_and_unwrap": round(1000 * med(mu_lk), 2),
            "peft_merge_and_unload": round(1000 * med(mu_pf), 2),
            "unmerge_max_abs_drift_after_all_rounds": drift,
            "memory_floor_one_pass_over_adapted_weights": round(1000 * floor, 2),
            "memory_floor_cold": round(1000 * med(cold), 2),
            "lorakit_merge_unsafe_over_cold_floor": round(med(mg_lk_unsafe) / med(cold), 3),
        }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
