"""The batching engine: a request's output does not depend on what else is in the batch.

The contracts that hold for both forwards run twice: the transformers forward on an fp32 model ("hf") and the
lean bf16 forward ("lean", tests/serve/test_lean_llama.py has its own checks).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serve_support import make_adapters, save_adapter, tiny_model, tiny_tokenizer

import lorakit
from lorakit.serve.engine import Engine, Event
from lorakit.serve.pool import AdapterPool
from lorakit.serve.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    return make_adapters(tmp_path_factory.mktemp("adapters"))


def engine_with(adapters: dict[str, Path], forward: str = "hf", **kw) -> Engine:
    model = tiny_model() if forward == "hf" else tiny_model().to(torch.bfloat16)
    pool = AdapterPool(model, next(iter(adapters.values())).parent)
    for name, path in adapters.items():
        pool.add(name, path)
    engine = Engine(model, tiny_tokenizer(), pool, **kw)
    assert engine.backend.name == ("lean bf16" if forward == "lean" else "transformers")  # bf16 Llama on the CPU
    return engine


both = pytest.mark.parametrize("forward", ["hf", "lean"])


Job = tuple[str, str | None, SamplingParams]


def run(engine: Engine, jobs: list[Job], steps_between: int = 0) -> list[list[Event]]:
    """Submit jobs (prompt, adapter, params), stepping the engine between submissions, then drain it."""
    out: list[list[Event]] = []
    for prompt, adapter, params in jobs:
        events: list[Event] = []
        out.append(events)
        engine.submit(engine.tokenizer.encode(prompt), adapter, params, events.append)
        for _ in range(steps_between):
            engine.step()
    engine.run_until_idle()
    return out


def tokens(events: list[Event]) -> list[int]:
    return [t for e in events for t in e.token_ids]


JOBS = [
    ("SELECT name FROM", "sql", GREEDY),
    ("name[The Eagle], food[French]", "e2e", GREEDY),
    ("hi", None, GREEDY),
    ("a longer prompt than every other prompt here", "chat", GREEDY),
    ("x", "sql", GREEDY),
    ("sampled rows share the batch", "e2e", SamplingParams(max_tokens=9, temperature=0.9, top_p=0.8, seed=3)),
]


@both
def test_greedy_output_is_identical_alone_and_in_a_busy_mixed_batch(adapters, forward):
    engine = engine_with(adapters, forward)
    alone = [run(engine, [job])[0] for job in JOBS]
    # Rows join while others decode (2 steps apart) and leave at different times: every join/leave path runs.
    staggered = run(engine, JOBS, steps_between=2)
    together = run(engine, JOBS)  # all prompts admitted in one step (hf: prefilled in one padded pass)
    for job, a, b, c in zip(JOBS, alone, staggered, together, strict=True):
        assert tokens(a) == tokens(b) == tokens(c), job
        assert "".join(e.text for e in a) == "".join(e.text for e in b) == "".join(e.text for e in c)
    assert not engine.running
    if forward == "hf":
        assert engine.backend.batch.rows == 0 and not engine.backend.rows
    else:
        assert not any(engine.backend.forward.cache.lengths)  # every cache slot was given back


def test_engine_output_equals_transformers_generate_with_the_adapter_active(adapters):
    engine = engine_with(adapters)
    for prompt, adapter, _ in JOBS[:4]:
        ids = torch.tensor([engine.tokenizer.encode(prompt)])
        lorakit.set_active(engine.model, engine.pool.entries[adapter].key if adapter else None)
        with torch.no_grad():
            expected = engine.model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0,
                                             eos_token_id=None)[0, ids.shape[1]:]
        assert tokens(run(engine, [(prompt, adapter, GREEDY)])[0]) == expected.tolist()


def test_an_adapter_changes_the_output_and_the_base_model_ignores_adapters(adapters):
    engine = engine_with(adapters)
    outs = {a: tokens(run(engine, [("same prompt", a, GREEDY)])[0]) for a in (None, "sql", "e2e")}
    assert len({tuple(v) for v in outs.values()}) == 3
    plain = tiny_model()
    ids = torch.tensor([engine.tokenizer.encode("same prompt")])
    with torch.no_grad():
        base = plain.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert outs[None] == base[0, ids.shape[1]:].tolist()


@both
def test_a_stop_string_ends_the_output_and_is_not_returned(adapters, forward):
    engine = engine_with(adapters, forward)
    full = "".join(e.text for e in run(engine, [("stop here", "sql", GREEDY)])[0])
    stop = full[5:7]
    events = run(engine, [("stop here", "sql", SamplingParams(max_tokens=12, temperature=0, stop=(stop,)))])[0]
    assert "".join(e.text for e in events) == full[: full.index(stop)]
    assert events[-1].finish_reason == "stop"


@both
def test_a_cancelled_request_leaves_the_batch_and_the_others_are_unaffected(adapters, forward):
    engine = engine_with(adapters, forward)
    alone = tokens(run(engine, [JOBS[0]])[0])
    events: list[Event] = []
    victim = engine.submit([5, 6, 7], "e2e", SamplingParams(max_tokens=50, temperature=0), events.append)
    kept: list[Event] = []
    engine.submit(engine.tokenizer.encode(JOBS[0][0]), "sql", GREEDY, kept.append)
    for _ in range(3):
        engine.step()
    engine.cancel(victim)
    engine.step()
    assert events[-1].finish_reason == "cancelled" and len(engine.running) == 1
    engine.run_until_idle()
    assert tokens(kept) == alone
    assert not engine.pool.in_use


@both
def test_reloading_a_name_serves_new_weights_while_running_requests_finish_on_the_old(adapters, tmp_path, forward):
    engine = engine_with(adapters, forward)
    before = tokens(run(engine, [("reload", "sql", GREEDY)])[0])
    running: list[Event] = []
    engine.submit(engine.tokenizer.encode("reload"), "sql", GREEDY, running.append)
    engine.step()
    other = save_adapter(tmp_path / "sql2", lorakit.LoraConfig(rank=4), seed=77)
    engine.pool.root = tmp_path
    old_key = engine.pool.entries["sql"].key
    engine.pool.add("sql", other)
    after = run(engine, [("reload", "sql", GREEDY)])[0]
    assert tokens(running) == before  # finished on the version it started with
    assert tokens(after) != before
    assert old_key not in lorakit.core.inject.state_of(engine.model).names  # deleted once idle


def test_merge_mode_gives_the_same_output_as_the_unmerged_adapter(adapters):
    engine = engine_with({"sql": adapters["sql"]})
    unmerged = tokens(run(engine, [("merge me", "sql", GREEDY)])[0])
    lorakit.merge(engine.model, engine.pool.entries["sql"].key)
    merged = Engine(engine.model, engine.tokenizer, engine.pool, merged="sql")  # as `lorakit serve --merge` builds it
    assert tokens(run(merged, [("merge me", "sql", GREEDY)])[0]) == unmerged


@both
def test_a_request_stops_at_the_context_length(adapters, forward):
    engine = engine_with(adapters, forward, max_context=20)
    events = run(engine, [("0123456789", "sql", SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))])[0]
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 10


@both
def test_a_failing_step_fails_the_requests_in_flight_and_the_engine_keeps_serving(adapters, monkeypatch, forward):
    import threading

    engine = engine_with(adapters, forward)
    real = engine.backend.prefill

    def broken(*args, **kw):
        raise RuntimeError("out of memory (simulated)")

    def collect(adapter: str | None) -> list[Event]:
        done = threading.Event()
        events: list[Event] = []
        engine.submit([5, 6, 7], adapter, GREEDY, lambda e: (events.append(e), e.finish_reason and done.set()))
        assert done.wait(20)
        return events

    engine.start()
    try:
        monkeypatch.setattr(engine.backend, "prefill", broken)
        failed = collect("sql")
        assert failed[-1].finish_reason == "error" and "out of memory" in failed[-1].error
        monkeypatch.setattr(engine.backend, "prefill", real)
        assert collect("sql")[-1].finish_reason == "length"
        assert not engine.pool.in_use
    finally:
        engine.stop()


def test_an_idle_engine_waits_for_requests_on_their_way_and_prefills_them_together(adapters, monkeypatch):
    """Engine.arriving: a burst of requests still being read by HTTP joins the first one's prefill."""
    import threading

    engine = engine_with(adapters, arrival_wait=30.0)  # only `arrived()` may end this wait in time
    sizes: list[int] = []
    prefill = engine._prefill
    monkeypatch.setattr(engine, "_prefill", lambda chunks: (chunks and sizes.append(len(chunks))) or prefill(chunks))
    done = [threading.Event() for _ in range(3)]
    engine.start()
    try:
        on_the_way = [engine.arriving() for _ in range(2)]
        engine.submit([5, 6, 7], "sql", GREEDY, lambda e: e.finish_reason and done[0].set())
        for i, arrived in enumerate(on_the_way, start=1):
            assert not done[0].wait(0.2)  # held: two more are on their way
            engine.submit([8, 9], "e2e", GREEDY, lambda e, i=i: e.finish_reason and done[i].set())
            arrived()
            arrived()  # idempotent
        assert all(d.wait(20) for d in done)
        assert sizes == [3] and engine._arriving == 0
    finally:
        engine.stop()
