"""lorakit compare: train several methods under one budget; report quality, convergence, cost and latency."""

from __future__ import annotations

import argparse


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _rates(text: str) -> tuple[tuple[str, float], ...]:
    """'2e-4' (every method) or 'lora=2e-4,full=5e-5'."""
    out = []
    for part in _names(text):
        name, _, value = part.rpartition("=")
        out.append((name or "*", float(value)))
    return tuple(out)


def add_parser(p: argparse.ArgumentParser) -> None:
    from lorakit.methods import ALL

    p.add_argument("--model", required=True, help="built-in model name or local transformers directory")
    p.add_argument("--task", required=True, choices=["e2e", "glue"])
    p.add_argument("--data", required=True, help="data directory (e2e CSVs, or a GLUE task directory)")
    p.add_argument("--glue-task", help="sst2, mrpc, rte or cola (task glue)")
    p.add_argument("--methods", type=_names, default=("lora", "full"), help=f"comma-separated: {', '.join(ALL)}")
    p.add_argument("--ranks", type=_ints, default=(), help="LoRA-family rank sweep, e.g. 1,2,4,8,64 (Table 6)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per run (the shared budget)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=_rates, default=(), help="2e-4 for all, or lora=2e-4,full=5e-5 (defaults per method)")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0, help="steps between dev evaluations (0: steps/5)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--train-limit", type=int, help="use only the first N training examples")
    p.add_argument("--dev-limit", type=int, default=200, help="dev examples per evaluation")
    p.add_argument("--generate-limit", type=int, default=50, help="e2e: dev inputs decoded for BLEU etc.")
    p.add_argument("--curve-inputs", type=int, default=20,
                   help="e2e: dev inputs decoded greedily at each evaluation for the BLEU curve (0: none)")
    p.add_argument("--beams", type=int, default=4, help="e2e: beam width of the final decoding")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha")
    p.add_argument("--targets", type=_names, default=("q_proj", "v_proj"), help="LoRA target modules")
    p.add_argument("--bottleneck", type=int, default=16, help="adapter bottleneck size r")
    p.add_argument("--prefix-length", type=int, default=16, help="prefix length l_p")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["auto", "bf16", "fp32"])
    p.add_argument("--latency-batches", type=_ints, default=(1, 8))
    p.add_argument("--latency-lengths", type=_ints, default=(64, 256))
    p.add_argument("--latency-repeats", type=int, default=10)
    p.add_argument("--no-latency", action="store_true", help="skip the latency grid")
    p.add_argument("--out", required=True, help="output directory; rerunning with it skips finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lorakit.compare import CompareConfig, compare

    config = CompareConfig(
        model=args.model, task=args.task, data=args.data, out=args.out, methods=args.methods,
        glue_task=args.glue_task, ranks=args.ranks, seeds=args.seeds, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, warmup_steps=args.warmup_steps, eval_every=args.eval_every, max_length=args.max_length,
        train_limit=args.train_limit, dev_limit=args.dev_limit, generate_limit=args.generate_limit,
        curve_inputs=args.curve_inputs,
        beams=args.beams, rank=args.rank, alpha=args.alpha, targets=args.targets, bottleneck=args.bottleneck,
        prefix_length=args.prefix_length, device=args.device, precision=args.precision,
        latency_batches=args.latency_batches, latency_lengths=args.latency_lengths,
        latency_repeats=args.latency_repeats,
    )
    results = compare(config, progress=not args.quiet, latency=not args.no_latency)
    print(f"compared {len(results['summary'])} methods x {config.seeds} seeds: wrote {args.out}/report.html")
    return 0
