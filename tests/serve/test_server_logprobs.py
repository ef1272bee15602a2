"""logprobs over HTTP with OpenAI's meanings: completions' legacy shape with echo, chat's content list, streamed
the same as whole, and the values the model itself gives (log_softmax of its logits)."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from edge_support import sse_events
from serve_support import SPECIALS, tiny_model, tiny_server, tiny_tokenizer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("root")) as s:
        yield s


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def reference(ids: list[int]) -> torch.Tensor:
    """(len(ids), vocab) log-probabilities of the next token after each position, from the model itself."""
    with torch.no_grad():
        return torch.log_softmax(tiny_model()(torch.tensor([ids])).logits[0].float(), -1)


def test_echo_with_logprobs_scores_every_prompt_token_as_the_model_does(client):
    prompt = "score this text"
    ids = tiny_tokenizer().encode(prompt)
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=1, temperature=0, logprobs=2, echo=True)
    choice = r.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt) and len(lp.tokens) == len(ids) + 1
    assert "".join(lp.tokens) == choice.text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    expected = reference(ids)
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(expected[i - 1, ids[i]].item(), abs=1e-4)
        top = lp.top_logprobs[i]
        assert 2 <= len(top) <= 3 and top[lp.tokens[i]] == lp.token_logprobs[i]
        assert max(top.values()) == pytest.approx(expected[i - 1].max().item(), abs=1e-4)
    # The generated token is greedy: the most likely one, as lm-eval's is_greedy check reads it.
    assert lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values())
    assert lp.token_logprobs[-1] == pytest.approx(expected[-1].max().item(), abs=1e-4)


def test_completion_logprobs_stream_the_same_as_they_return_whole(served, client):
    body = {"model": "sql", "prompt": "stream me", "max_tokens": 12, "temperature": 0, "logprobs": 1,
            "ignore_eos": True}
    whole = httpx.post(served.url + "/v1/completions", json=body, timeout=30).json()["choices"][0]
    with httpx.stream("POST", served.url + "/v1/completions", json={**body, "stream": True}, timeout=30) as r:
        chunks = [e["choices"][0] for e in sse_events(r) if isinstance(e, dict)]
    assert sum(len(c["logprobs"]["tokens"]) for c in chunks if c["logprobs"]) == 12
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [v for c in chunks if c["logprobs"] for v in c["logprobs"][key]] == whole["logprobs"][key], key
    assert "".join(c["text"] for c in chunks) == whole["text"]
    plain = httpx.post(served.url + "/v1/completions", json={**body, "logprobs": None}, timeout=30).json()
    assert plain["choices"][0]["logprobs"] is None and plain["choices"][0]["text"] == whole["text"]


def test_chat_logprobs_list_each_token_with_its_bytes_and_top_alternatives(client):
    messages = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="e2e", messages=messages, max_tokens=10, temperature=0, logprobs=True,
                                       top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 10
    for entry in content:
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs),
                                                                 reverse=True)
        assert len(entry.top_logprobs) == 3 and entry.logprob == entry.top_logprobs[0].logprob  # greedy
    # Byte-level tokens split characters: their bytes, not their texts, add up to the answer.
    joined = b"".join(bytes(e.bytes) for e in content if e.token not in SPECIALS)
    assert joined.decode("utf-8", errors="replace") == r.choices[0].message.content
    stream = client.chat.completions.create(model="e2e", messages=messages, max_tokens=10, temperature=0,
                                            logprobs=True, top_logprobs=3, stream=True,
                                            extra_body={"ignore_eos": True})
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    bare = client.chat.completions.create(model="e2e", messages=messages, max_tokens=3, logprobs=True)
    assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)


def test_logprobs_beyond_five_alternatives_or_without_logprobs_are_refused(client):
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="tiny", prompt="x", max_tokens=1, logprobs=6)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], logprobs=True,
                                       top_logprobs=6)
    with pytest.raises(openai.BadRequestError, match="needs logprobs"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], top_logprobs=2)
