"""The edge refuses what it cannot serve faithfully, with OpenAI-shaped errors, and keeps serving: strict types,
seed range, caps on rows and stop strings, unsupported fields by name, invalid Unicode, oversized bodies, and
failures inside the server."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from edge_support import limited_server, sse_events

LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with limited_server(tmp_path_factory.mktemp("root"), max_body=LIMIT) as s:
        yield s


def post(served, path: str, body: dict | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(served.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    return httpx.post(served.url + path, json=body, timeout=30)


def refused(r: httpx.Response, status: int = 400) -> dict:
    """The OpenAI-shaped error of a refused request."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status and error["message"] and error["type"]
    return error


def still_serves(served) -> None:
    r = post(served, "/v1/completions", {"model": "sql", "prompt": "ok", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text


BASE = {"model": "sql", "prompt": "x", "max_tokens": 2}


def test_values_of_the_wrong_json_type_are_refused_not_coerced(served):
    for field, value in [("max_tokens", "5"), ("max_tokens", True), ("max_tokens", 5.0), ("stream", "yes"),
                         ("n", "2"), ("temperature", "0.5"), ("seed", "1"), ("echo", 1), ("logprobs", True)]:
        error = refused(post(served, "/v1/completions", {**BASE, field: value}))
        assert error["param"] == field and field in error["message"], (field, value)
    error = refused(post(served, "/v1/completions", {**BASE, "prompt": ["a", 1]}))
    assert error["param"] == "prompt" and "expected" in error["message"]
    error = refused(post(served, "/v1/chat/completions", {"model": "sql", "messages": [{"role": "user",
                                                                                         "content": 3}]}))
    assert error["param"] == "messages.0.content"
    assert post(served, "/v1/completions", {**BASE, "temperature": 0, "top_p": None, "n": None}).status_code == 200


def test_a_seed_must_fit_a_signed_64_bit_integer_for_every_choice(served):
    for seed, n in [(2**64, 1), (2**63, 1), (-(2**63) - 1, 1), (2**63 - 1, 2)]:
        error = refused(post(served, "/v1/completions", {**BASE, "seed": seed, "n": n, "temperature": 1}))
        assert error["param"] == "seed", (seed, n)
    for seed, n in [(2**63 - 1, 1), (2**63 - 2, 2), (-(2**63), 3), (-1, 1)]:
        r = post(served, "/v1/completions", {**BASE, "seed": seed, "n": n, "temperature": 1})
        assert r.status_code == 200 and len(r.json()["choices"]) == n, (seed, r.text)
    a, b = (post(served, "/v1/completions", {**BASE, "seed": -5, "temperature": 1, "max_tokens": 8}).json()
            for _ in range(2))
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_n_prompts_rows_and_stop_strings_are_capped(served):
    cases = [
        ({**BASE, "n": 17}, "n"),
        ({**BASE, "prompt": ["p"] * 65}, "prompt"),
        ({**BASE, "prompt": ["p"] * 8, "n": 9}, "n"),
        ({**BASE, "stop": [str(i) for i in range(17)]}, "stop"),
        ({**BASE, "stop": "s" * 257}, "stop"),
        ({**BASE, "stop": [""]}, "stop"),
    ]
    for body, param in cases:
        assert refused(post(served, "/v1/completions", body))["param"] == param, body
    r = post(served, "/v1/completions", {**BASE, "prompt": ["p"] * 8, "n": 8, "temperature": 0,
                                         "stop": [str(i) for i in range(16)]})
    assert r.status_code == 200 and len(r.json()["choices"]) == 64


def test_unsupported_fields_are_refused_by_name_unless_they_carry_their_default(served):
    for extra in [{"best_of": 2}, {"logit_bias": {"5": 10}}, {"suffix": "end"}, {"frequency_penalty": 0.5},
                  {"presence_penalty": -1}, {"top_k": 5}, {"max_token": 5}]:
        name = next(iter(extra))
        error = refused(post(served, "/v1/completions", {**BASE, **extra}))
        assert name in error["message"] and error["param"] == name, extra
    harmless = {"best_of": 1, "logit_bias": {}, "suffix": None, "frequency_penalty": 0, "presence_penalty": 0.0,
                "user": "someone", "top_k": -1}
    assert post(served, "/v1/completions", {**BASE, **harmless}).status_code == 200
    chat = {"model": "sql", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for extra in [{"tools": [{"type": "function", "function": {"name": "f"}}]}, {"response_format":
                  {"type": "json_object"}}, {"logit_bias": {"1": 1}}, {"audio": {"voice": "x"}}]:
        assert next(iter(extra)) in refused(post(served, "/v1/chat/completions", {**chat, **extra}))["message"]
    # What an OpenAI client sends back when a conversation replays an earlier answer: null tool fields.
    replay = {"role": "assistant", "content": "hello", "refusal": None, "tool_calls": None, "function_call": None,
              "audio": None, "annotations": []}
    body = {**chat, "messages": [chat["messages"][0], replay, {"role": "user", "content": "again", "name": "me"}],
            "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "parallel_tool_calls": True,
            "store": False, "metadata": {"k": "v"}}
    assert post(served, "/v1/chat/completions", body).status_code == 200
    error = refused(post(served, "/v1/chat/completions", {**chat, "messages": [{**replay, "tool_calls": [{}]}]}))
    assert "messages.0.tool_calls" in error["message"]


def test_invalid_unicode_anywhere_is_a_json_400(served):
    prompt = b'{"model": "sql", "prompt": "a\\ud800b", "max_tokens": 2}'
    model = b'{"model": "s\\udfffql", "prompt": "a", "max_tokens": 2}'
    chat = b'{"model": "sql", "messages": [{"role": "user", "content": "\\ud800"}]}'
    raw_bytes = b'{"model": "sql", "prompt": "\xed\xa0\x80", "max_tokens": 2}'
    for path, body in [("/v1/completions", prompt), ("/v1/completions", model), ("/v1/chat/completions", chat),
                       ("/v1/completions", raw_bytes)]:
        assert "Unicode" in refused(post(served, path, body))["message"], body
    still_serves(served)


def test_a_bad_lora_path_is_a_json_400(served):
    for path in ["sql\x00", "a" * 5000, "x/" * 600, "b" * 1000]:
        error = refused(post(served, "/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": path}))
        assert error["param"] == "lora_path"
    refused(post(served, "/v1/load_lora_adapter", {"lora_name": "n" * 300, "lora_path": "sql"}))
    still_serves(served)


def test_a_body_over_the_limit_is_a_413_before_it_is_parsed_declared_or_chunked(served):
    big = b'{"model": "sql", "prompt": "' + b"x" * LIMIT + b'"}'
    error = refused(post(served, "/v1/completions", big), 413)
    assert "--max-body" in error["message"]

    def chunks():  # no Content-Length: counted while it is read
        for i in range(0, len(big), 16384):
            yield big[i : i + 16384]

    r = httpx.post(served.url + "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"},
                   timeout=30)
    refused(r, 413)
    still_serves(served)


def test_health_answers_while_a_large_request_is_being_prepared(served, monkeypatch):
    """Parsing and tokenizing run off the event loop: /health returns while one request is held inside
    tokenization; with the work on the loop, /health could not answer until the request was released."""
    tokenizer = served.engine.tokenizer
    entered, release = threading.Event(), threading.Event()
    real = tokenizer.encode

    def held(text, *args, **kwargs):
        entered.set()
        release.wait(30)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", held)
    body = {"model": "sql", "prompt": "y" * (LIMIT // 2), "max_tokens": 2}
    results = []
    sender = threading.Thread(target=lambda: results.append(post(served, "/v1/completions", body)))
    sender.start()
    try:
        assert entered.wait(30)
        health = httpx.get(served.url + "/health", timeout=10)
        assert health.status_code == 200 and sender.is_alive()
    finally:
        release.set()
        sender.join(30)
    assert refused(results[0])["param"] == "prompt"  # a 128 KiB prompt cannot fit the tiny context


def test_an_unexpected_failure_is_a_json_500_and_the_server_goes_on(served, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(served.engine.tokenizer, "encode", broken)
    error = refused(post(served, "/v1/completions", BASE), 500)
    assert "RuntimeError" in error["message"] and "boom" not in error["message"]
    monkeypatch.undo()
    still_serves(served)


def test_a_stream_that_fails_after_it_started_ends_with_an_error_event_then_done(served, monkeypatch):
    backend = served.engine.backend
    real = backend.decode
    calls = []

    def failing(rows):
        calls.append(len(rows))
        if len(calls) > 2:
            raise RuntimeError("device lost")
        return real(rows)

    monkeypatch.setattr(backend, "decode", failing)
    body = {**BASE, "max_tokens": 20, "stream": True, "ignore_eos": True, "temperature": 0}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert events[-1] == "[DONE]" and "error" in events[-2] and events[-2]["error"]["message"]
    assert any(isinstance(e, dict) and e.get("choices") for e in events[:-2])
    monkeypatch.undo()
    with pytest.raises(openai.APIError):
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0)
        monkeypatch.setattr(backend, "decode", failing)
        calls.clear()
        list(client.completions.create(model="sql", prompt="x", max_tokens=20, stream=True,
                                       extra_body={"ignore_eos": True}))
    monkeypatch.undo()
    still_serves(served)


def test_concurrent_unloads_of_one_adapter_give_one_200_and_404s(served):
    r = post(served, "/v1/load_lora_adapter", {"lora_name": "twice", "lora_path": "chat"})
    assert r.status_code == 200, r.text
    gate = threading.Event()
    served.engine.call(lambda: gate.wait(30))  # hold the engine so that all four unloads are asked at once
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(post, served, "/v1/unload_lora_adapter", {"lora_name": "twice"}) for _ in range(4)]
        time.sleep(0.5)
        gate.set()
        answers = [p.result() for p in pending]
    assert sorted(a.status_code for a in answers) == [200, 404, 404, 404]
    assert all(refused(a, 404)["param"] == "lora_name" for a in answers if a.status_code == 404)


def test_an_adapter_config_with_an_invalid_regex_is_a_json_400(served):
    bad = served.root / "badregex"
    shutil.copytree(served.adapters["sql"], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": {"(": 8}}))
    error = refused(post(served, "/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": "badregex"}))
    assert error["param"] == "lora_path"
    still_serves(served)
