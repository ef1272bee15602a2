"""`lorakit serve`: one base model, many LoRA adapters, an OpenAI-compatible HTTP API (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lorakit.core.errors import ConfigError


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="built-in model name or local transformers directory")
    p.add_argument("--served-model-name", default=None,
                   help="the name requests use for the base model (default: --model as given)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="serve the adapter in PATH as NAME (repeatable); loaded at startup")
    p.add_argument("--adapter-root", default=None, metavar="DIR",
                   help="allow POST /v1/load_lora_adapter for adapter directories under DIR (off without it)")
    p.add_argument("--adapter-memory", type=float, default=None, metavar="MIB",
                   help="resident adapter weights budget in MiB; idle adapters are evicted LRU (default: no limit)")
    p.add_argument("--merge", action="store_true",
                   help="merge the single --adapter into the weights: base-model latency, only that adapter served")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("LORAKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health (env LORAKIT_API_KEY)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bfloat16 where the lean forward runs the model (a Llama on the CPU: batch-invariant "
                        "greedy output, ~2x the fp32 throughput), else float32")
    p.add_argument("--max-batch", type=int, default=64, help="most requests decoded together")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; on a busy shared CPU, 1 can be several times "
                        "faster than oversubscribing)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context length limit in tokens (default: the model's)")


def parse_adapters(items: list[str]) -> dict[str, Path]:
    """NAME=PATH pairs -> {name: path}; every malformed or repeated item is reported at once."""
    out: dict[str, Path] = {}
    problems = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            problems.append(f"--adapter {item!r} must look like NAME=PATH, e.g. sql=./adapters/sql")
        elif name in out:
            problems.append(f"--adapter name {name!r} is given twice")
        else:
            out[name] = Path(path)
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def build_service(args: argparse.Namespace):
    """The Service that `lorakit serve` would serve (model loaded, adapters loaded or merged); starts nothing."""
    import torch

    import lorakit
    from lorakit.models import load, resolve_device
    from lorakit.serve.engine import Engine
    from lorakit.serve.llama import unsupported
    from lorakit.serve.pool import AdapterPool
    from lorakit.serve.service import Service

    adapters = parse_adapters(args.adapter)
    if args.merge and len(adapters) != 1:
        raise ConfigError(f"--merge serves exactly one adapter; got {len(adapters)} --adapter options")
    if args.merge and args.adapter_root:
        raise ConfigError("--merge cannot load adapters at runtime; drop --adapter-root")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, tokenizer = load(args.model, dtype=torch.float32 if args.dtype == "auto" else getattr(torch, args.dtype))
    if args.dtype == "auto" and device.type == "cpu" and unsupported(model) is None:
        model = model.to(torch.bfloat16)
    model = model.to(device).eval()
    budget = None if args.adapter_memory is None else int(args.adapter_memory * 2**20)
    pool = AdapterPool(model, args.adapter_root, budget)
    for name, path in adapters.items():
        pool.add(name, path, trusted=True)
    merged = None
    if args.merge:
        merged = next(iter(adapters))
        lorakit.merge(model, pool.entries[merged].key)
    engine = Engine(model, tokenizer, pool, max_batch=args.max_batch, max_context=args.max_model_len, merged=merged)
    local = Path(args.model)
    return Service(engine, args.served_model_name or args.model, str(local.resolve()) if local.exists() else None)


def run(args: argparse.Namespace) -> int:
    from lorakit.serve.app import serve

    service = build_service(args)
    engine = service.engine
    forward = engine.backend.name + (", running rows join prefills" if engine.backend.decode_in_prefill else "")
    print(f"lorakit serve: {service.base_name} on {engine.device} ({forward} forward) with adapters "
          f"{service.pool.names() or 'none'}{' (merged)' if engine.merged else ''}; http://{args.host}:{args.port}/")
    serve(service, args.host, args.port, args.api_key)
    return 0
