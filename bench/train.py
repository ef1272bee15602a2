"""Training-step throughput and peak memory: lorakit LoRA vs PEFT LoRA vs full fine-tuning, fp32 and bf16 autocast.

    python bench/train.py [--repeats 3] [--steps 1] [--random]
    python bench/train.py --e2e ../shared/data/e2e [--config configs/e2e-smollm2-lora.yaml] [--batches 24]
    python bench/train.py --contention 1 [--threads N] [--precision fp32] [--repeats 3] [--steps 2]

--e2e: real E2E batches as the recipe trains them (its config's model, LoRA, batch size, max_length, precision),
padded vs packed (train.batching): two copies of the prepared model train on the same batches in turns, one step
each; prints real (non-padding) tokens/s of each, the positions computed, and both runs' losses (they agree up to
rounding and dropout masks, which are drawn per position).

--contention K: lorakit LoRA steps quiet and beside K busy-loop processes (pinned to no core), in interleaved
rounds (the order alternates): median tokens/s of each and the share kept.

Configurations: {lorakit, peft, full} x {fp32, bf16 autocast}, plus lorakit-bf16w: bf16 autocast with the frozen
Linear weights stored in bf16 (TrainConfig.frozen_bf16).

Workload: SmolLM2-135M (the built-in, or with --random / when it is not installed a random-weight LlamaConfig of
its shape), batch 8 x 128 tokens, LoRA rank 8 (alpha 16, no dropout) on q_proj and v_proj. One step = forward
under autocast, the loop's cross-entropy, backward, AdamW step.

Throughput: every configuration lives in this one process and they take turns (repeat r runs each config for
--steps steps), so slow phases of a shared machine hit all configs alike; we report the median tokens/s.

Peak memory: each configuration runs in a fresh child process. After the model is built, the child resets the
kernel's resident-set high-water mark (writing 5 to /proc/self/clear_refs, after malloc_trim returns memory freed
while preparing), runs one warm-up step and --steps
more, and reads VmHWM from /proc/self/status. `peak_rss_mib` is that high-water mark (weights + gradients +
optimizer state + activations, all allocators included, which tracemalloc would miss); `step_mib` is its growth
over the RSS before the first step. Where clear_refs is unavailable, ru_maxrss is used (it then includes loading).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

BATCH, LENGTH, RANK, ALPHA = 8, 128, 8, 16
METHODS = ("lorakit", "peft", "full")
PRECISIONS = ("fp32", "bf16")


def base_model(random_weights: bool) -> torch.nn.Module:
    """SmolLM2-135M from lorakit.models, or a random model of its shape."""
    if not random_weights:
        try:
            from lorakit.models import load

            model = load("smollm2-135m")[0]
            # safetensors maps the weights from the cache file; copies make them ordinary memory, so every
            # configuration's resident set counts its weights the same way (mapped pages stay resident after
            # their tensors are freed, e.g. when frozen weights are replaced by bf16 copies).
            with torch.no_grad():
                for p in model.parameters():
                    p.data = p.data.clone()
            return model
        except Exception as e:  # not installed: fall back to the same shape with random weights
            print(f"smollm2-135m unavailable ({e}); using random weights of its shape", file=sys.stderr)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
        vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=100000.0,
    ))


def prepare(method: str, random_weights: bool, precision: str = "fp32") -> torch.nn.Module:
    """The model for one configuration; "bf16w" is bf16 autocast with frozen Linear weights stored in bf16
    (TrainConfig.frozen_bf16)."""
    model = base_model(random_weights)
    if method == "lorakit":
        import lorakit

        lorakit.inject(model, lorakit.LoraConfig(rank=RANK, alpha=ALPHA, targets=("q_proj", "v_proj")))
    elif method == "peft":
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                           target_modules=["q_proj", "v_proj"]))
    else:
        model.requires_grad_(True)
    if precision == "bf16w":
        from lorakit.train.precision import frozen_linears_to

        frozen_linears_to(model, torch.bfloat16)
    return model.train()


class Runner:
    """One configuration: its model, optimizer and a fixed batch."""

    def __init__(self, method: str, precision: str, model: torch.nn.Module) -> None:
        self.name, self.model = f"{method}-{precision}", model
        self.bf16 = precision in ("bf16", "bf16w")
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        ids = torch.randint(0, 49152, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
        self.batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def step(self) -> None:
        from lorakit.train import cross_entropy_sum

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(**self.batch).logits
            loss = cross_entropy_sum(logits, self.batch["input_ids"]) / (BATCH * (LENGTH - 1))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def tokens_per_s(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * BATCH * LENGTH / (time.perf_counter() - start)


def throughput(repeats: int, steps: int, random_weights: bool) -> dict[str, list[float]]:
    models = {m: prepare(m, random_weights) for m in METHODS}
    # fp32 and bf16 of one method share its model: only autocast differs, and separate optimizers keep state apart.
    runners = [Runner(m, p, models[m]) for m in METHODS for p in PRECISIONS]
    runners.append(Runner("lorakit", "bf16w", prepare("lorakit", random_weights, "bf16w")))
    for runner in runners:
        runner.step()  # warm-up: allocator, oneDNN kernels, optimizer state
    results: dict[str, list[float]] = {r.name: [] for r in runners}
    for _ in range(repeats):
        for runner in runners:
            results[runner.name].append(runner.tokens_per_s(steps))
    return results


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(name: str, steps: int, random_weights: bool) -> dict[str, float | str]:
    import resource

    method, precision = name.split("-")
    runner = Runner(method, precision, prepare(method, random_weights, precision))
    # Hand memory freed while preparing (e.g. fp32 weights replaced by bf16 copies) back to the kernel, so the
    # high-water mark below counts what the step needs, not what glibc kept around. Same for every config.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = rss_mib()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        how = "VmHWM after clear_refs"
    except OSError:
        how = "ru_maxrss (includes model loading)"
    for _ in range(steps + 1):
        runner.step()
    peak = next((int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                 if line.startswith("VmHWM:")), None) if how.startswith("VmHWM") else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mib": round(peak, 1), "step_mib": round(peak - before, 1), "measured_by": how}


def e2e_batching(data: str, config_path: str, batches: int) -> dict:
    """Padded vs packed steps on real E2E batches of the recipe (see the module docstring)."""
    import copy

    from lorakit.data import model_inputs
    from lorakit.methods import METHODS
    from lorakit.models import load
    from lorakit.tasks import read_split, task_for
    from lorakit.train.batches import BatchOrder, micro_batches, token_count
    from lorakit.train.config import load_config
    from lorakit.train.loop import _autocast, cross_entropy_sum, scored_positions_only

    config = load_config(config_path, {"data.train": data})
    task = task_for(config.data)
    model, tokenizer = load(config.model.name, kind=task.kind)
    METHODS[config.method].prepare(model, config.lora, config.method_options)
    train = config.train
    examples = task.tokenize(read_split(config.data, "train"), tokenizer, config.data.max_length)
    order = BatchOrder(len(examples), train.batch_size, train.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    autocast = _autocast(train.precision, torch.device("cpu"))
    if train.frozen_bf16 and train.precision != "fp32":
        from lorakit.train.precision import frozen_linears_to

        frozen_linears_to(model, torch.bfloat16)
    runs = {}
    for packed in (False, True):
        copy_ = copy.deepcopy(model).train()
        optimizer = torch.optim.AdamW([p for p in copy_.parameters() if p.requires_grad], lr=train.lr)
        runs["packed" if packed else "padded"] = {"model": copy_, "optimizer": optimizer, "packed": packed,
                                                 "seconds": 0.0, "tokens": 0, "positions": 0, "losses": []}
    for step in range(batches + 1):  # step 0 warms up and is not timed
        for run in runs.values():
            torch.manual_seed(step)
            batch = micro_batches(examples, order.indices(step), 0, 1, 1, pad, run["packed"])[0]
            labels_total = int((batch["labels"][:, 1:] != -100).sum())
            start = time.perf_counter()
            with autocast(), scored_positions_only(run["model"], batch["labels"]) as labels:
                loss = cross_entropy_sum(run["model"](**model_inputs(batch)).logits, labels, train.label_smoothing)
            (loss / labels_total).backward()
            run["optimizer"].step()
            run["optimizer"].zero_grad(set_to_none=True)
            if step:
                run["seconds"] += time.perf_counter() - start
                run["tokens"] += token_count(batch)
                run["positions"] += batch["input_ids"].numel()
                run["losses"].append(round(loss.item() / labels_total, 4))
    out = {"workload": {"config": config_path, "model": config.model.name, "method": config.method,
                        "batch_size": train.batch_size, "max_length": config.data.max_length,
                        "precision": train.precision, "frozen_bf16": train.frozen_bf16, "timed_batches": batches,
                        "threads": torch.get_num_threads(), "torch": torch.__version__}}
    for name, run in runs.items():
        out[name] = {"real_tokens_per_s": round(run["tokens"] / run["seconds"], 1), "real_tokens": run["tokens"],
                     "positions": run["positions"], "seconds": round(run["seconds"], 2), "losses": run["losses"]}
    out["packed_over_padded_real_tokens_per_s (goal >= 1.3)"] = round(
        out["packed"]["real_tokens_per_s"] / out["padded"]["real_tokens_per_s"], 3)
    pairs = zip(out["padded"]["losses"], out["packed"]["losses"], strict=True)
    out["largest_loss_difference"] = round(max(abs(a - b) for a, b in pairs), 5)
    return out


def contention(busy: int, repeats: int, steps: int, random_weights: bool, precision: str) -> dict:
    """lorakit LoRA tokens/s quiet and beside `busy` busy loops (see the module docstring)."""
    from serve import busy_loops  # bench/serve.py, beside this script

    runner = Runner("lorakit", precision, prepare("lorakit", random_weights, precision))
    runner.step()  # warm-up
    runs: dict[str, list[float]] = {"quiet": [], "shared": []}
    for r in range(repeats):
        for mode in ("quiet", "shared") if r % 2 == 0 else ("shared", "quiet"):
            with busy_loops(busy if mode == "shared" else 0):
                runs[mode].append(runner.tokens_per_s(steps))
    quiet, shared = statistics.median(runs["quiet"]), statistics.median(runs["shared"])
    return {"busy_loops": busy, "precision": precision, "threads": torch.get_num_threads(), "repeats": repeats,
            "steps_per_repeat": steps, "quiet_tokens_per_s": round(quiet, 1), "shared_tokens_per_s": round(shared, 1),
            "kept (goal >= 0.4)": round(shared / quiet, 3),
            "runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per repeat (and per memory child)")
    parser.add_argument("--random", action="store_true", help="random weights of SmolLM2's shape")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--e2e", metavar="DIR", help="E2E data directory: time padded vs packed real batches")
    parser.add_argument("--config", default="configs/e2e-smollm2-lora.yaml", help="the recipe for --e2e")
    parser.add_argument("--batches", type=int, default=24, help="timed batches per run for --e2e")
    parser.add_argument("--contention", type=int, metavar="K", help="LoRA steps quiet and beside K busy loops")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "bf16w"), help="for --contention")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.contention:
        print(json.dumps(contention(args.contention, args.repeats, args.steps, args.random, args.precision), indent=2))
        return
    if args.e2e:
        print(json.dumps(e2e_batching(args.e2e, args.config, args.batches), indent=2))
        return
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.steps, args.random)))
        return
    started = time.perf_counter()
    speeds = throughput(args.repeats, args.steps, args.random)
    out: dict = {"workload": {"model": "SmolLM2-135M shape" + (" (random)" if args.random else ""),
                              "batch": BATCH, "tokens": LENGTH, "rank": RANK, "targets": ["q_proj", "v_proj"],
                              "repeats": args.repeats, "steps_per_repeat": args.steps,
                              "threads": torch.get_num_threads(), "torch": torch.__version__},
                 "configs": {}}
    for name, values in speeds.items():
        child = [sys.executable, __file__, "--memory-child", name, "--steps", str(args.steps)]
        child += ["--random"] if args.random else []
        memory = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout)
        out["configs"][name] = {"tokens_per_s": round(statistics.median(values), 1),
                                "tokens_per_s_runs": [round(v, 1) for v in values], **memory}
    c = out["configs"]
    out["goals"] = {
        "lorakit_fp32_over_peft_fp32 (goal >= 1)": round(c["lorakit-fp32"]["tokens_per_s"]
                                                         / c["peft-fp32"]["tokens_per_s"], 3),
        "lorakit_default_bf16_over_peft_fp32 (goal >= 1.5)": round(c["lorakit-bf16"]["tokens_per_s"]
                                                                   / c["peft-fp32"]["tokens_per_s"], 3),
        "lorakit_peak_over_full_peak_fp32 (goal <= 0.6)": round(c["lorakit-fp32"]["peak_rss_mib"]
                                                                / c["full-fp32"]["peak_rss_mib"], 3),
        "lorakit_peak_over_full_peak_bf16 (goal <= 0.6)": round(c["lorakit-bf16"]["peak_rss_mib"]
                                                                / c["full-bf16"]["peak_rss_mib"], 3),
        "lorakit_frozen_bf16_peak_over_full_peak_bf16 (goal <= 0.6)": round(
            c["lorakit-bf16w"]["peak_rss_mib"] / c["full-bf16"]["peak_rss_mib"], 3),
        "lorakit_frozen_bf16_over_peft_fp32 (goal >= 1.5)": round(c["lorakit-bf16w"]["tokens_per_s"]
                                                                  / c["peft-fp32"]["tokens_per_s"], 3),
    }
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
