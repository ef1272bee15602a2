"""Logprobs: log_softmax of the model's raw logits at each generated and prompt position, on both forwards."""

from __future__ import annotations

import pytest
import torch
from serve_support import make_adapters, tiny_model, tiny_tokenizer

import lorakit
from lorakit.serve.engine import Engine, Event
from lorakit.serve.pool import AdapterPool
from lorakit.serve.sampling import SamplingParams, TokenLogprob, token_logprobs, top_tokens


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return make_adapters(tmp_path_factory.mktemp("adapters"))


def engine_with(adapters, forward: str) -> Engine:
    model = tiny_model() if forward == "hf" else tiny_model().to(torch.bfloat16)
    pool = AdapterPool(model, next(iter(adapters.values())).parent)
    for name, path in adapters.items():
        pool.add(name, path)
    engine = Engine(model, tiny_tokenizer(), pool)
    assert engine.backend.name == ("lean bf16" if forward == "lean" else "transformers")
    return engine


def generate(engine: Engine, prompt: list[int], adapter: str | None, params: SamplingParams) -> list[Event]:
    events: list[Event] = []
    engine.submit(prompt, adapter, params, events.append)
    engine.run_until_idle()
    assert events[-1].finish_reason == "length", events[-1].error
    return events


def reference(engine: Engine, ids: list[int], adapter: str | None) -> torch.Tensor:
    """(len(ids), vocab) log_softmax of a plain transformers forward over the whole sequence, adapter applied."""
    key = engine.pool.entries[adapter].key if adapter else None
    with torch.no_grad(), lorakit.adapter_rows(engine.model, [key]):
        return torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].float(), dim=-1)


@pytest.mark.parametrize("forward", ["hf", "lean"])
@pytest.mark.parametrize("adapter, temperature", [(None, 0.0), ("e2e", 0.0), ("sql", 0.8)])
def test_logprobs_are_the_log_softmax_of_the_model_at_every_position(adapters, forward, adapter, temperature):
    engine = engine_with(adapters, forward)
    prompt = [5, 40, 77, 9, 120, 33, 61]
    params = SamplingParams(max_tokens=5, temperature=temperature, seed=1, ignore_eos=True, logprobs=3,
                            prompt_logprobs=2)
    events = generate(engine, prompt, adapter, params)
    output = [t for e in events for t in e.token_ids]
    logprobs = [lp for e in events for lp in e.logprobs]
    assert [lp.token for lp in logprobs] == output
    assert events[0].prompt_logprobs is not None and all(e.prompt_logprobs is None for e in events[1:])
    prompt_lp = events[0].prompt_logprobs
    assert len(prompt_lp) == len(prompt) and prompt_lp[0] is None
    assert [lp.token for lp in prompt_lp[1:]] == prompt[1:]
    expected = reference(engine, prompt + output, adapter)
    tol = 1e-4 if forward == "hf" else 0.05  # lean: bf16 logits, summed in another order than transformers'
    for pos, lp in enumerate(prompt_lp[1:] + logprobs):  # lp is the token at pos + 1, from the logits at pos
        assert lp.logprob == pytest.approx(float(expected[pos, lp.token]), abs=tol)
        k = 2 if pos < len(prompt) - 1 else 3
        assert len(lp.top) == k
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert [v for _, v in lp.top] == pytest.approx(expected[pos].topk(k).values.tolist(), abs=tol)
        assert lp.top[0][1] >= lp.logprob
    if temperature == 0:
        assert all(lp.top[0][0] == lp.token for lp in logprobs)  # the greedy choice is the most likely token


@pytest.mark.parametrize("forward", ["hf", "lean"])
def test_logprobs_are_off_unless_asked_and_zero_gives_the_token_alone(adapters, forward):
    engine = engine_with(adapters, forward)
    plain = generate(engine, [5, 6, 7], "sql", SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    assert all(e.logprobs is None and e.prompt_logprobs is None for e in plain)
    asked = generate(engine, [5, 6, 7], "sql", SamplingParams(max_tokens=3, temperature=0, ignore_eos=True,
                                                               logprobs=0, prompt_logprobs=0))
    assert [t for e in asked for t in e.token_ids] == [t for e in plain for t in e.token_ids]
    assert all(lp.top == [] for e in asked for lp in e.logprobs)
    assert all(lp.top == [] for lp in asked[0].prompt_logprobs[1:])


@pytest.mark.parametrize("forward", ["hf", "lean"])
def test_rows_asking_for_logprobs_do_not_change_the_rows_beside_them(adapters, forward):
    engine = engine_with(adapters, forward)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    solo = [t for e in generate(engine, [9, 8, 7], "e2e", params) for t in e.token_ids]
    beside: list[Event] = []
    engine.submit([9, 8, 7], "e2e", params, beside.append)
    engine.submit([5, 6], "sql", SamplingParams(max_tokens=6, temperature=0, logprobs=5, prompt_logprobs=5),
                  lambda e: None)
    engine.run_until_idle()
    assert [t for e in beside for t in e.token_ids] == solo


def test_top_tokens_orders_ties_by_the_lower_id_as_argmax_does():
    x = torch.tensor([[0.5, 2.0, 1.0, 2.0, -1.0, 2.0], [-3.0, -1.0, -1.0, -0.0, 0.0, -2.0]])
    assert top_tokens(x, 4).tolist() == [[1, 3, 5, 2], [3, 4, 1, 2]]
    assert int(top_tokens(x, 1)[0, 0]) == int(x[0].argmax())
    got = token_logprobs(x, [4, 0], 2)
    assert got[0] == TokenLogprob(4, pytest.approx(float(torch.log_softmax(x[0], -1)[4])), got[0].top)
    assert [t for t, _ in got[0].top] == [1, 3]
