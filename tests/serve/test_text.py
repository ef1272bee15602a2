"""Streamed text and sampling: pieces add up to the final text, stop strings never leak, top-p keeps the nucleus."""

from __future__ import annotations

import pytest
import torch
from serve_support import tiny_tokenizer

from lorakit import ConfigError
from lorakit.serve.sampling import SamplingParams, choose_tokens, sample_row
from lorakit.serve.text import TextStream


def stream_all(ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    s = TextStream(tiny_tokenizer(), stop)
    pieces = []
    for t in ids:
        pieces.append(s.add(t))
        if s.stopped:
            break
    pieces.append(s.finish())
    return pieces, s


def test_streamed_pieces_concatenate_to_the_decoded_text_even_for_multibyte_characters():
    tok = tiny_tokenizer()
    text = "naïve café — 東京 🙂 ok"
    ids = tok.encode(text)
    pieces, _ = stream_all(ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)  # a character is sent only when all its bytes have arrived


def test_a_stop_string_split_across_tokens_is_never_sent_even_in_part():
    ids = tiny_tokenizer().encode("hello STOP world")
    pieces, s = stream_all(ids, stop=("STOP",))
    assert "".join(pieces) == "hello " and s.stopped
    assert all("S" not in p for p in pieces)


def test_text_without_a_stop_string_is_not_held_back_at_the_end():
    pieces, s = stream_all(tiny_tokenizer().encode("a STO"), stop=("STOP",))
    assert "".join(pieces) == "a STO" and not s.stopped


def test_greedy_rows_take_the_argmax_and_seeded_rows_repeat():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=5), SamplingParams(temperature=0)]
    first = choose_tokens(logits, params, [p.generator(torch.device("cpu")) for p in params])
    again = choose_tokens(logits, params, [p.generator(torch.device("cpu")) for p in params])
    assert torch.equal(first, again)
    assert first[0] == logits[0].argmax() and first[2] == logits[2].argmax()


def test_top_p_samples_only_from_the_nucleus():
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0, -2.0])  # p ≈ 0.72, 0.26, ...: top_p=0.9 keeps tokens 0 and 1
    g = torch.Generator().manual_seed(0)
    drawn = {sample_row(logits, 1.0, 0.9, g) for _ in range(300)}
    assert drawn == {0, 1}
    assert {sample_row(logits, 1.0, 0.01, g) for _ in range(50)} == {0}


def test_invalid_sampling_parameters_are_all_reported_at_once():
    with pytest.raises(ConfigError) as e:
        SamplingParams(max_tokens=0, temperature=-1, top_p=0, stop=("",))
    for field in ("max_tokens", "temperature", "top_p", "stop"):
        assert field in str(e.value)
