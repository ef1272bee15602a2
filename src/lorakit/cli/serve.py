"""`lorakit serve`: one base model, many LoRA adapters, an OpenAI-compatible HTTP API (FastAPI + uvicorn).

Safe by default: the server listens on loopback; a key (--api-key or LORAKIT_API_KEY) is needed to listen
elsewhere unless --allow-unauthenticated says so; resident adapter weights have a budget; SIGTERM or SIGINT drain
the requests in flight before exiting.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lorakit.cli.options import add_flat, given
from lorakit.core.errors import ConfigError
from lorakit.core.schema import Schema, validate

API_KEY_ENV = "LORAKIT_API_KEY"


class ServeOptions(Schema):
    """What `lorakit serve` serves, where, and within which limits."""

    model: str = "smollm2-135m"
    """Built-in model name or local transformers directory."""
    served_model_name: str | None = None
    """The name requests use for the base model (null: --model as given)."""
    adapter: list[str] = []
    """NAME=PATH: serve the adapter in PATH as NAME, loaded at startup (repeat --adapter for more)."""
    adapter_root: str | None = None
    """Allow POST /v1/load_lora_adapter for adapter directories under this directory (off without it)."""
    adapter_memory: float | None = Field(1024.0, gt=0)
    """Budget for resident adapter weights in MiB: idle adapters are evicted least recently used first and
    reloaded from disk when asked for again (null: no limit)."""
    merge: bool = False
    """Merge the single --adapter into the weights: base-model latency, only that adapter served."""
    host: str = "127.0.0.1"
    """Address to listen on; anything but loopback needs --api-key or --allow-unauthenticated."""
    port: int = Field(8000, ge=0, le=65535)
    """Port to listen on."""
    api_key: str | None = None
    """Require 'Authorization: Bearer KEY' on every endpoint but /health and the page (null: the LORAKIT_API_KEY
    environment variable if set, else no key); an empty key is refused."""
    allow_unauthenticated: bool = False
    """Listen on a non-loopback --host without an API key: anyone who reaches the port can generate and load or
    unload adapters."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda or cuda:N."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 where the lean forward runs the model (a Llama on the CPU: batch-invariant greedy output,
    ~2x the fp32 throughput), else float32."""
    max_batch: int = Field(64, ge=1)
    """Most requests decoded together."""
    prefill_chunk: int | None = Field(None, ge=1)
    """Most prompt tokens prefilled between two decode steps of running requests, so that a long prompt never
    stalls their streams for long (null: the engine's default)."""
    threads: int | None = Field(None, ge=1)
    """Torch CPU threads for the model (null: one per usable core but one, which is left to HTTP and its clients; on
    two cores, one thread keeps its speed beside another busy process where two lose most of theirs: BENCHMARKS.md)."""
    max_model_len: int | None = Field(None, ge=1)
    """Context length limit in tokens (null: the model's)."""
    max_body: float = Field(4.0, gt=0)
    """Largest request body in MiB; a larger one is refused (413) before it is read in full."""
    drain_timeout: float = Field(30.0, ge=0)
    """Seconds SIGTERM or SIGINT give requests in flight to finish; those still running then end with an error
    and the exit status is 128 + the signal's number (143 for SIGTERM) instead of 0."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """uvicorn's log level."""

    @model_validator(mode="after")
    def _safe(self) -> ServeOptions:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError(f"api_key: an empty API key would leave the server open; give a non-empty --api-key "
                             f"(or {API_KEY_ENV}), or leave it unset on a loopback --host")
        if self.api_key is None and not self.allow_unauthenticated and not loopback(self.host):
            raise ValueError(f"host: {self.host!r} is reachable from other machines and no API key is set: give "
                             f"--api-key KEY (or {API_KEY_ENV}), or --allow-unauthenticated if the network is "
                             f"trusted")
        return self


RAW_STRINGS = ("model", "served_model_name", "adapter_root", "host", "api_key", "device")
"""Options kept exactly as typed rather than read as YAML (a key `0123` or `yes`, an empty `--api-key ""`)."""


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_parser(p: argparse.ArgumentParser) -> None:
    add_flat(p, ServeOptions, skip=("adapter",))
    p.add_argument("--adapter", action="append", default=argparse.SUPPRESS, metavar="NAME=PATH",
                   help=ServeOptions.model_fields["adapter"].description)


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The command line's options, validated; the API key from the environment when not given."""
    data = given(args, ServeOptions)
    data.update({k: v for k, v in vars(args).items() if k in RAW_STRINGS})
    if "api_key" not in data and API_KEY_ENV in os.environ:
        data["api_key"] = os.environ[API_KEY_ENV]
    return validate(ServeOptions, data, "options")


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


def default_threads() -> int:
    """The model's CPU threads when --threads is not given: the usable cores but one (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def build_service(o: ServeOptions):
    """The Service that `lorakit serve` would serve (model loaded, adapters loaded or merged); starts nothing."""
    import torch

    import lorakit
    from lorakit.models import load, resolve_device
    from lorakit.serve.engine import Engine
    from lorakit.serve.llama import unsupported
    from lorakit.serve.pool import AdapterPool
    from lorakit.serve.service import Service

    adapters = parse_adapters(o.adapter)
    if o.merge and len(adapters) != 1:
        raise ConfigError(f"--merge serves exactly one adapter; got {len(adapters)} --adapter options")
    if o.merge and o.adapter_root:
        raise ConfigError("--merge cannot load adapters at runtime; drop --adapter-root")
    device = resolve_device(o.device)
    if o.threads or device.type == "cpu":
        torch.set_num_threads(o.threads or default_threads())
    model, tokenizer = load(o.model, dtype=torch.float32 if o.dtype == "auto" else getattr(torch, o.dtype))
    if o.dtype == "auto" and device.type == "cpu" and unsupported(model) is None:
        model = model.to(torch.bfloat16)
    model = model.to(device).eval()
    budget = None if o.adapter_memory is None else int(o.adapter_memory * 2**20)
    pool = AdapterPool(model, o.adapter_root, budget)
    for name, path in adapters.items():
        pool.add(name, path, trusted=True)
    merged = None
    if o.merge:
        merged = next(iter(adapters))
        lorakit.merge(model, pool.entries[merged].key)
    chunk = {} if o.prefill_chunk is None else {"prefill_chunk": o.prefill_chunk}
    engine = Engine(model, tokenizer, pool, max_batch=o.max_batch, max_context=o.max_model_len, merged=merged,
                    **chunk)
    # /v1/models shows the base model's directory as its root: where a client such as lm-eval finds the tokenizer.
    local = Path(o.model)
    root = str(local.resolve()) if local.exists() else getattr(tokenizer, "name_or_path", None)
    return Service(engine, o.served_model_name or o.model, root or None)


def run(args: argparse.Namespace) -> int:
    from lorakit.serve.app import serve

    o = serve_options(args)
    service = build_service(o)
    engine = service.engine
    forward = engine.backend.name + (", running rows join prefills" if engine.backend.decode_in_prefill else "")
    print(f"lorakit serve: {service.base_name} on {engine.device} ({forward} forward) with adapters "
          f"{service.pool.names() or 'none'}{' (merged)' if engine.merged else ''}; http://{o.host}:{o.port}/",
          flush=True)
    return serve(service, o.host, o.port, o.api_key, log_level=o.log_level, max_body=int(o.max_body * 2**20),
                 drain_timeout=o.drain_timeout)
