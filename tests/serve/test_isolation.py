"""One request never harms another: whatever fails because of one request ends that request alone (with an error
and a status), every other request finishes as it would alone, and every request gets exactly one final event."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from serve_support import make_adapters, tiny_model, tiny_tokenizer

from lorakit.serve import llama
from lorakit.serve.engine import Engine, Event
from lorakit.serve.hf import TransformersBackend
from lorakit.serve.metrics import Metrics
from lorakit.serve.pool import AdapterPool
from lorakit.serve.sampling import SamplingParams, choose_tokens

both = pytest.mark.parametrize("forward", ["hf", "lean"])
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


class Gauges(Metrics):
    """Metrics that remember the last gauges the engine set."""

    def set_gauges(self, **values: int) -> None:
        super().set_gauges(**values)
        self.last = values


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    return make_adapters(tmp_path_factory.mktemp("adapters"))


def engine_with(adapters: dict[str, Path], forward: str, budget: int | None = None) -> Engine:
    model = tiny_model() if forward == "hf" else tiny_model().to(torch.bfloat16)
    pool = AdapterPool(model, next(iter(adapters.values())).parent, budget)
    for name, path in adapters.items():
        pool.add(name, path)
    return Engine(model, tiny_tokenizer(), pool, metrics=Gauges(), arrival_gap=0)


def crowd(n: int = 32) -> list[tuple[list[int], str | None]]:
    """n greedy jobs (prompt, adapter) over two adapters and the base model: 8 different ones, repeated."""
    jobs = [([5 + i % 7, 9 + i % 5, 40 + i, 7][: 2 + i % 3], ("sql", "e2e", None)[i % 3]) for i in range(8)]
    return jobs * (n // 8)


def submit(engine: Engine, prompt: list[int], adapter: str | None, params: SamplingParams = GREEDY) -> list[Event]:
    events: list[Event] = []
    engine.submit(prompt, adapter, params, events.append)
    return events


def outputs(runs: list[list[Event]]) -> list[list[int]]:
    for events in runs:
        assert sum(e.finish_reason is not None for e in events) == 1 and events[-1].finish_reason, events
    return [[t for e in events for t in e.token_ids] for events in runs]


SOLO: dict[tuple | None, list[list[int]]] = {}


def solo(engine: Engine, jobs, key: tuple | None = None) -> list[list[int]]:
    """Each job's tokens run alone (remembered under `key`: the same jobs on the same kind of engine)."""
    if key is not None and key in SOLO:
        return SOLO[key]
    found: dict[tuple, list[int]] = {}
    for prompt, adapter in jobs:
        if (tuple(prompt), adapter) not in found:
            events = submit(engine, prompt, adapter)
            engine.run_until_idle()
            found[tuple(prompt), adapter] = outputs([events])[0]
    SOLO[key] = [found[tuple(prompt), adapter] for prompt, adapter in jobs]
    return SOLO.pop(key) if key is None else SOLO[key]


def assert_idle(engine: Engine) -> None:
    assert not engine.waiting and not engine.running and not engine.pool.in_use
    assert engine.metrics.last["waiting"] == 0 and engine.metrics.last["running"] == 0
    if isinstance(engine.backend, TransformersBackend):
        assert not engine.backend.rows and not engine.backend.pending and engine.backend.batch.rows == 0
    else:
        assert not any(engine.backend.forward.cache.lengths) and not engine.backend._slots


def break_config(directory: Path) -> None:
    config = json.loads((directory / "adapter_config.json").read_text())
    config["rank_pattern"] = {"(": 8}  # not a regular expression
    (directory / "adapter_config.json").write_text(json.dumps(config))


@both
@pytest.mark.parametrize("hostile", ["seed", "token", "broken reload"])
def test_a_hostile_request_fails_alone_and_32_concurrent_ones_match_their_solo_runs(adapters, tmp_path, forward,
                                                                                   hostile):
    root = tmp_path / "root"
    shutil.copytree(next(iter(adapters.values())).parent, root)
    shutil.copytree(root / "chat", root / "bad")
    sizes = {n: (root / n / "adapter_model.safetensors").stat().st_size for n in ("sql", "e2e", "chat", "bad")}
    # Room for every adapter but one: "bad", loaded first and idle, is evicted, then reloaded for its request.
    engine = engine_with({n: root / n for n in ("bad", "sql", "e2e", "chat")}, forward,
                         budget=sizes["sql"] + sizes["e2e"] + sizes["chat"])
    assert not engine.pool.entries["bad"].resident
    jobs = crowd()
    alone = solo(engine, jobs, ("crowd", forward))
    if hostile == "seed":  # past what torch takes: SamplingParams refuses it, so set it as a client could not
        params = SamplingParams(max_tokens=6, temperature=1.0, seed=1)
        object.__setattr__(params, "seed", 2**64)
        bad = (lambda: submit(engine, [5, 6], "sql", params), 400, "seed")
    elif hostile == "token":  # a token id outside the vocabulary: the batched prefill raises, nobody knows for whom
        bad = (lambda: submit(engine, [5, 10**6, 6], None), 500, "forward pass")
    else:
        break_config(root / "bad")
        bad = (lambda: submit(engine, [5, 6], "bad"), 400, "could not be loaded")
    make, status, words = bad
    runs = [submit(engine, p, a) for p, a in jobs[:16]]
    hostile_events = make()
    runs += [submit(engine, p, a) for p, a in jobs[16:]]
    engine.run_until_idle()
    assert outputs(runs) == alone
    (last,) = [e for e in hostile_events if e.finish_reason]
    assert last.finish_reason == "error" and last.status == status and words in last.error, last
    assert_idle(engine)


@both
def test_a_request_whose_decode_step_fails_ends_alone_and_the_others_continue(adapters, monkeypatch, forward):
    """A fault in a decode step that only one row triggers (here its adapter's, simulated in the forward): found by
    running each row on its own, that row ends with an error and the step reruns for the others."""
    engine = engine_with(adapters, forward)
    jobs = crowd(12)
    alone = solo(engine, jobs)
    poisoned = engine.pool.entries["chat"].key
    if forward == "hf":
        real = engine.backend._forward

        def forward_fn(rows, ids, *args, **kw):
            if ids.shape[1] == 1 and any(r.key == poisoned for r in rows):
                raise RuntimeError("simulated fault")
            return real(rows, ids, *args, **kw)

        monkeypatch.setattr(engine.backend, "_forward", forward_fn)
    else:
        real = engine.backend.forward.decode

        def forward_fn(slots, tokens, names):
            if poisoned in names:
                raise RuntimeError("simulated fault")
            return real(slots, tokens, names)

        monkeypatch.setattr(engine.backend.forward, "decode", forward_fn)
        engine.backend.decode_in_prefill = False  # decode steps of their own, where the fault is
    runs = [submit(engine, p, a) for p, a in jobs[:6]]
    engine.step()
    engine.step()
    hostile = submit(engine, [8, 9, 10], "chat")
    runs += [submit(engine, p, a) for p, a in jobs[6:]]
    engine.run_until_idle()
    assert outputs(runs) == alone
    assert hostile[-1].finish_reason == "error" and hostile[-1].status == 500 and "simulated fault" in hostile[-1].error
    assert len(hostile) == 2  # its first token came from the prefill, then the failed step ended it
    assert_idle(engine)


@both
def test_a_failure_no_single_request_causes_ends_the_requests_in_that_pass_and_the_engine_goes_on(
        adapters, monkeypatch, forward):
    engine = engine_with(adapters, forward)
    real = engine.backend.prefill
    monkeypatch.setattr(engine.backend, "prefill", lambda *a, **kw: (_ for _ in ()).throw(MemoryError("simulated")))
    failed = [submit(engine, [5, 6, 7], "sql"), submit(engine, [8], None)]
    engine.run_until_idle()
    assert all(e[-1].finish_reason == "error" and e[-1].status == 500 and "MemoryError" in e[-1].error
               for e in failed)
    monkeypatch.setattr(engine.backend, "prefill", real)
    assert solo(engine, [([5, 6, 7], "sql")]) == solo(engine_with(adapters, forward), [([5, 6, 7], "sql")])
    assert_idle(engine)


def test_a_row_whose_probabilities_are_not_finite_fails_alone_in_sampling():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    logits[1, 7] = float("nan")
    params = [SamplingParams(temperature=1.0, seed=s) for s in range(3)]
    failed: dict[int, Exception] = {}
    tokens = choose_tokens(logits, params, [p.generator(torch.device("cpu")) for p in params], failed)
    assert list(failed) == [1] and tokens[1] == -1
    alone = [choose_tokens(logits[i : i + 1], params[i : i + 1], [params[i].generator(torch.device("cpu"))])
             for i in (0, 2)]
    assert [int(tokens[0]), int(tokens[2])] == [int(t[0]) for t in alone]
    with pytest.raises(RuntimeError):
        choose_tokens(logits, params, [p.generator(torch.device("cpu")) for p in params])


def test_the_lean_caches_are_as_they_were_after_a_pass_that_raised():
    model = tiny_model().to(torch.bfloat16)
    lean = llama.LeanLlama(model)
    (slot,), _ = lean.prefill([[5, 6, 7]], [None])
    with pytest.raises(IndexError):
        lean.prefill([[8, 9], [10**6]], [None, None], [slot, None])  # continues `slot`, takes a new one, raises
    cache = lean.cache
    assert cache.lengths[slot] == 3 and sum(cache.lengths) == 3
    assert sorted(cache.free) == [s for s in range(len(cache.lengths)) if s != slot]  # the new slot is free again
