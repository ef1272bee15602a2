"""Draining: no new requests, those in flight finish, and what outlives the drain timeout ends with a 503 error."""

from __future__ import annotations

import threading

import pytest
import torch
from serve_support import make_adapters, tiny_model, tiny_tokenizer

from lorakit.serve.engine import Engine, Event, ShuttingDown
from lorakit.serve.pool import AdapterPool
from lorakit.serve.sampling import SamplingParams

LONG = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return make_adapters(tmp_path_factory.mktemp("adapters"))


@pytest.fixture(params=["hf", "lean"])
def engine(adapters, request) -> Engine:
    model = tiny_model() if request.param == "hf" else tiny_model().to(torch.bfloat16)
    pool = AdapterPool(model, next(iter(adapters.values())).parent)
    for name, path in adapters.items():
        pool.add(name, path)
    return Engine(model, tiny_tokenizer(), pool, prefill_chunk=8)


def submit(engine: Engine, prompt: list[int], adapter: str | None = "sql") -> list[Event]:
    events: list[Event] = []
    engine.submit(prompt, adapter, LONG, events.append)
    return events


def test_a_drain_refuses_new_requests_and_lets_those_in_flight_finish(engine):
    runs = [submit(engine, [5, 6, 7]), submit(engine, list(range(10, 40)), "e2e"), submit(engine, [8], None)]
    engine.step()  # one running, one part-way through its prompt, one waiting
    assert engine.running and engine.prefilling and engine.waiting
    assert engine.drain(timeout=600)
    assert all(r[-1].finish_reason == "length" and r[-1].completion_tokens == 30 for r in runs)
    with pytest.raises(ShuttingDown, match="shutting down"):
        submit(engine, [5])


def test_requests_that_outlive_the_drain_timeout_end_with_a_503(engine):
    runs = [submit(engine, [5, 6, 7]), submit(engine, list(range(10, 40)), "e2e"), submit(engine, [8], None)]
    engine.step()
    assert not engine.drain(timeout=0)
    for events in runs:
        (last,) = [e for e in events if e.finish_reason]
        assert last.finish_reason == "error" and last.status == 503 and "--drain-timeout=0s" in last.error
    assert not engine.waiting and not engine.prefilling and not engine.running and not engine.pool.in_use


def test_a_drain_from_another_thread_waits_for_the_engine_thread(engine):
    done = threading.Event()
    events: list[Event] = []

    def listen(e: Event) -> None:
        events.append(e)
        if e.finish_reason:
            done.set()

    engine.start()
    try:
        engine.submit([5, 6, 7], "sql", LONG, listen)
        assert engine.drain(timeout=600)
        assert done.is_set() and events[-1].finish_reason == "length"
    finally:
        engine.stop()
    with pytest.raises(ShuttingDown):
        engine.submit([5], None, LONG, listen)
