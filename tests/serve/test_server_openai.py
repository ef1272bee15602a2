"""A real server on loopback, talked to with the official openai client: what a vLLM client expects works."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest
from edge_support import metric_samples
from serve_support import tiny_server, tiny_tokenizer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("root")) as s:
        yield s


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def complete(client, model: str, prompt: str, max_tokens: int = 10) -> str:
    r = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                  extra_body={"ignore_eos": True})
    return r.choices[0].text


def test_models_lists_the_base_model_and_every_adapter_with_the_base_as_parent(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny", "sql", "e2e"}
    assert models["sql"].parent == "tiny" and models["e2e"].parent == "tiny" and models["tiny"].parent is None


def test_a_completion_streams_the_same_text_it_returns_whole(client):
    whole = client.completions.create(model="sql", prompt="SELECT", max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 10
    chunks = list(client.completions.create(model="sql", prompt="SELECT", max_tokens=10, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_uses_the_tokenizer_template_and_streams_the_same_text(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    whole = client.chat.completions.create(model="e2e", messages=messages, max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert whole.choices[0].message.role == "assistant"
    tok = tiny_tokenizer()
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert whole.usage.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))
    stream = client.chat.completions.create(model="e2e", messages=messages, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 8


def test_the_model_field_picks_the_adapter_and_concurrent_mixed_requests_match_solo_runs(client):
    prompts = [("tiny", "one"), ("sql", "two two"), ("e2e", "three"), ("sql", "four"), ("tiny", "five five five")]
    solo = [complete(client, m, p) for m, p in prompts]
    assert len({complete(client, m, "same") for m in ("tiny", "sql", "e2e")}) == 3
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as ex:
        together = list(ex.map(lambda mp: complete(client, *mp), prompts))
    assert together == solo


def test_n_seed_and_stop_follow_the_openai_meanings(client):
    r = client.completions.create(model="sql", prompt="n", max_tokens=8, n=2, temperature=1.0, seed=11)
    again = client.completions.create(model="sql", prompt="n", max_tokens=8, n=2, temperature=1.0, seed=11)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [c.text for c in again.choices]
    full = complete(client, "sql", "stop", 10)
    cut = client.completions.create(model="sql", prompt="stop", max_tokens=10, temperature=0, stop=[full[4:6]],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert cut.text == full[: full.index(full[4:6])] and cut.finish_reason == "stop"


def test_adapters_load_and_unload_at_runtime_and_a_reload_serves_the_new_weights(client, served):
    url = served.url
    r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": "chat"})
    assert r.status_code == 200, r.text
    assert "chat" in {m.id for m in client.models.list().data}
    chat = complete(client, "chat", "reload me")
    r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": "sql"})
    assert r.status_code == 200
    assert complete(client, "chat", "reload me") == complete(client, "sql", "reload me") != chat
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "chat"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        complete(client, "chat", "gone")
    r = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "chat"})
    assert r.status_code == 404 and "cannot be found" in r.text


def test_health_and_metrics_report_requests_tokens_and_latency(client, served):
    complete(client, "sql", "count me")
    assert httpx.get(f"{served.url}/health").text == "ok"
    samples = metric_samples(httpx.get(f"{served.url}/metrics").text)
    assert samples[("lorakit_requests_total", (("finish_reason", "length"), ("model", "sql")))] >= 1
    names = {name for name, _ in samples}
    for name in ("lorakit_generated_tokens_total", "lorakit_queue_length", "lorakit_batch_size_bucket",
                 "lorakit_time_to_first_token_seconds_count", "lorakit_request_latency_seconds_sum",
                 "lorakit_resident_adapters", "lorakit_adapter_loads_total", "lorakit_http_errors_total"):
        assert name in names, name
    assert samples[("lorakit_generated_tokens_total", ())] >= 10


def test_every_request_leaves_the_engine_s_count_of_requests_on_their_way(client, served):
    """The HTTP layer counts each generation request as on its way until submitted (Engine.arriving); a request
    that fails validation, one that streams and one that returns whole must all leave the count at zero, or the
    engine would wait for them before every prefill."""
    client.completions.create(model="sql", prompt="a", max_tokens=2)
    list(client.completions.create(model="sql", prompt="a", max_tokens=2, stream=True))
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="sql", prompt="a", max_tokens=2, temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert served.engine._arriving == 0
