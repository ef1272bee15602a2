"""Bad input and bad adapters get a clear refusal and leave the server serving; a disconnect frees the row."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from edge_support import metric_samples
from serve_support import CONTEXT, save_adapter, tiny_server

import lorakit


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("root"), api_key="s3cret") as s:
        yield s


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="s3cret", max_retries=0, timeout=30)


def post(served, path: str, body, key: str | None = "s3cret") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        return httpx.post(served.url + path, content=body, headers=headers, timeout=30)
    return httpx.post(served.url + path, json=body, headers=headers, timeout=30)


def still_serves(client) -> None:
    assert client.completions.create(model="sql", prompt="ok", max_tokens=2, temperature=0).choices[0].text is not None


def test_an_unknown_model_is_a_404_naming_the_available_ones_never_the_base_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="sqll", prompt="x", max_tokens=2)
    assert "sqll" in str(e.value) and "'tiny'" in str(e.value) and "'sql'" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_wrong_types_and_malformed_json_are_400s_that_name_the_field(served, client):
    cases = [
        ({"model": "sql", "prompt": "x", "max_tokens": "ten"}, "max_tokens"),
        ({"model": "sql", "prompt": "x", "temperature": 5}, "temperature"),
        ({"model": "sql"}, "prompt"),
        ({"model": "sql", "prompt": "x", "n": 0}, "n"),
        ({"prompt": "x"}, "model"),
    ]
    for body, field in cases:
        r = post(served, "/v1/completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == field and field in r.json()["error"]["message"]
    r = post(served, "/v1/chat/completions", {"model": "sql", "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and "messages.0.role" in r.json()["error"]["message"]
    r = post(served, "/v1/completions", b'{"model": "sql", "prompt": ')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    still_serves(client)


def test_a_prompt_longer_than_the_context_is_a_400_stating_the_limits(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="sql", prompt="x" * (CONTEXT + 5), max_tokens=4)
    assert f"maximum context length is {CONTEXT} tokens" in str(e.value) and f"{CONTEXT + 5} in the prompt" in str(
        e.value)
    with pytest.raises(openai.BadRequestError, match="for the completion"):
        client.completions.create(model="sql", prompt="x" * 10, max_tokens=CONTEXT)


def test_an_adapter_for_another_base_model_or_outside_the_root_is_refused_and_the_server_is_unaffected(served, client):
    save_adapter(served.root / "foreign", lorakit.LoraConfig(rank=4), seed=2, layers=3)
    for path, why in [("foreign", "adapter 'bad' was not loaded"), ("../etc", "'..'"), ("/tmp", "outside"),
                      ("nowhere", "does not exist")]:
        r = post(served, "/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": path})
        assert r.status_code == 400 and why in r.json()["error"]["message"], (path, r.text)
    assert "bad" not in {m.id for m in client.models.list().data}
    still_serves(client)


def test_every_endpoint_but_health_and_the_page_needs_the_api_key(served):
    assert httpx.get(served.url + "/health").status_code == 200
    assert httpx.get(served.url + "/").status_code == 200
    for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/completions"),
                         ("POST", "/v1/chat/completions"), ("POST", "/v1/load_lora_adapter"),
                         ("POST", "/v1/unload_lora_adapter")]:
        for key in (None, "wrong"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.request(method, served.url + path, headers=headers, json={})
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"], (path, key)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_a_client_disconnecting_mid_stream_frees_its_row(served, monkeypatch):
    engine = served.engine
    slow = engine.backend.decode

    def decode(rows):  # slow decoding down so the disconnect lands while the request still runs
        time.sleep(0.02)
        return slow(rows)

    monkeypatch.setattr(engine.backend, "decode", decode)
    body = {"model": "e2e", "prompt": "go", "max_tokens": 80, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=30,
                      headers={"Authorization": "Bearer s3cret"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                break
        assert engine.running
    deadline = time.monotonic() + 5
    while (engine.running or engine.pool.in_use) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.running and not engine.pool.in_use
    metrics = httpx.get(served.url + "/metrics", headers={"Authorization": "Bearer s3cret"}).text
    assert metric_samples(metrics)[("lorakit_requests_total", (("finish_reason", "cancelled"), ("model", "e2e")))] == 1
