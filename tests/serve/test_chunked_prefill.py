"""Chunked prefill: a prompt prefilled in chunks gives what it gives whole, no prefill pass takes more than
prefill_chunk tokens, and running rows get a token between any two passes (counted in engine steps)."""

from __future__ import annotations

import random

import pytest
import torch
from serve_support import make_adapters, tiny_model, tiny_tokenizer

from lorakit.serve.backend import Chunk
from lorakit.serve.engine import Engine, Event, Request
from lorakit.serve.pool import AdapterPool
from lorakit.serve.sampling import SamplingParams

both = pytest.mark.parametrize("forward", ["hf", "lean"])


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return make_adapters(tmp_path_factory.mktemp("adapters"))


def engine_with(adapters, forward: str, **kw) -> Engine:
    model = tiny_model() if forward == "hf" else tiny_model().to(torch.bfloat16)
    pool = AdapterPool(model, next(iter(adapters.values())).parent)
    for name, path in adapters.items():
        pool.add(name, path)
    return Engine(model, tiny_tokenizer(), pool, **kw)


def submit(engine: Engine, prompt: list[int], adapter: str | None, params: SamplingParams
           ) -> tuple[Request, list[Event]]:
    events: list[Event] = []
    return engine.submit(prompt, adapter, params, events.append), events


def passes(engine: Engine, monkeypatch) -> list[list[Chunk]]:
    """Record the chunks of every prefill pass the backend runs."""
    seen: list[list[Chunk]] = []
    real = engine.backend.prefill
    monkeypatch.setattr(engine.backend, "prefill", lambda chunks, carried=(): seen.append(list(chunks)) or real(
        chunks, carried))
    return seen


def cost(engine: Engine, chunks: list[Chunk]) -> int:
    sizes = [c.end - c.start for c in chunks]
    return len(sizes) * max(sizes) if engine.backend.padded else sum(sizes)


@both
def test_prompts_prefilled_in_chunks_give_what_they_give_whole(adapters, forward, monkeypatch):
    rng = random.Random(0)
    jobs = [([rng.randrange(5, 260) for _ in range(n)], adapter)
            for n, adapter in [(70, "e2e"), (3, "sql"), (41, None), (12, "chat"), (60, "sql"), (1, "e2e")]]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, prompt_logprobs=2)
    results = []
    for chunk in (10_000, 7):
        engine = engine_with(adapters, forward, prefill_chunk=chunk)
        seen = passes(engine, monkeypatch)
        runs = []
        for prompt, adapter in jobs:  # one step apart: chunks of several prompts share passes with decode steps
            runs.append(submit(engine, prompt, adapter, params)[1])
            engine.step()
        engine.run_until_idle()
        assert all(cost(engine, p) <= chunk for p in seen)
        results.append(([[t for e in r for t in e.token_ids] for r in runs], [r[0].prompt_logprobs for r in runs]))
    (whole, whole_lp), (chunked, chunked_lp) = results
    assert chunked == whole
    for a, b in zip(whole_lp, chunked_lp, strict=True):
        assert [x.token for x in a[1:]] == [x.token for x in b[1:]]
        if forward == "lean":  # the same bits, chunked or not
            assert a == b
        else:
            assert [x.logprob for x in a[1:]] == pytest.approx([x.logprob for x in b[1:]], abs=1e-4)


@both
def test_a_running_row_gets_a_token_between_the_chunks_of_a_long_prompt(adapters, forward):
    engine = engine_with(adapters, forward, prefill_chunk=16)
    runner, runner_events = submit(engine, [5, 6, 7], "sql", SamplingParams(max_tokens=40, temperature=0,
                                                                            ignore_eos=True))
    engine.step()
    assert runner in engine.running
    long, _ = submit(engine, list(range(10, 90)), "e2e", SamplingParams(max_tokens=4, temperature=0,
                                                                        ignore_eos=True))
    steps = 0
    while long not in engine.running:
        before = len(runner.output)
        engine.step()
        steps += 1
        assert len(runner.output) == before + 1  # one token for the running row in every step
        assert long.prefilled == min(80, 16 * steps)
    assert steps == 5  # 80 prompt tokens, 16 a pass
    engine.run_until_idle()
    assert runner_events[-1].finish_reason == "length"


@both
def test_a_crowd_of_short_prompts_is_admitted_a_bounded_pass_at_a_time(adapters, forward, monkeypatch):
    """Many rows (as from one request with many prompts and n) take many passes of at most prefill_chunk tokens,
    each followed by a token for the running rows."""
    engine = engine_with(adapters, forward, prefill_chunk=20, max_batch=200)
    seen = passes(engine, monkeypatch)
    runner, _ = submit(engine, [5, 6, 7], None, SamplingParams(max_tokens=60, temperature=0, ignore_eos=True))
    engine.step()
    crowd = [submit(engine, [9 + i % 50, 8, 7, 6], ("sql", "e2e", None)[i % 3],
                    SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)) for i in range(100)]
    while engine.waiting:
        before = len(runner.output)
        engine.step()
        assert len(runner.output) == before + 1
    engine.run_until_idle()
    assert all(cost(engine, p) <= 20 for p in seen) and len(seen) >= 100 * 4 // 20
    assert all(events[-1].finish_reason == "length" for _, events in crowd)
