"""OpenAI-shaped responses and stream chunks, log-probabilities included.

Completions report logprobs in the legacy shape {tokens, token_logprobs, top_logprobs, text_offset}, where each
top_logprobs entry maps token text to logprob for the top k plus the chosen token (vLLM's convention: the entry
is never empty, and a harness can tell whether the chosen token was the most likely one). Chat reports
{content: [{token, logprob, bytes, top_logprobs: [...]}]} with exactly the top k, as OpenAI does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lorakit.serve.protocol import error_body

if TYPE_CHECKING:
    from lorakit.serve.engine import Event, TokenLogprob
    from lorakit.serve.text import TokenText


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(event: Event) -> str | None:
    """OpenAI knows only stop and length; a cancelled or failed request reaches a client as "abort" (vLLM's)."""
    if event.finish_reason in (None, "stop", "length"):
        return event.finish_reason
    return "abort"


def sse(obj: dict | str) -> str:
    """One server-sent event: a JSON object, or the closing `[DONE]`."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def sse_error(status: int, message: str) -> str:
    """The event a stream sends when its request fails after the stream started (OpenAI clients raise it)."""
    return sse(error_body(status, message))


class CompletionLogprobs:
    """One completion choice's logprobs in the legacy shape, built up event by event; text_offset counts
    characters of the choice's text (the echoed prompt included)."""

    def __init__(self, texts: TokenText, offset: int = 0):
        self.texts = texts
        self.offset = offset

    def block(self, entries: Sequence[TokenLogprob | None], tokens: Sequence[int]) -> dict:
        """The logprobs of `tokens` (an entry None: the first prompt token, which has no logprob)."""
        out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, entry in zip(tokens, entries, strict=True):
            text = self.texts.text(token)
            out["tokens"].append(text)
            out["text_offset"].append(self.offset)
            self.offset += len(text)
            if entry is None:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            out["token_logprobs"].append(entry.logprob)
            top: dict[str, float] = {}
            for t, lp in [*entry.top, (entry.token, entry.logprob)]:
                top.setdefault(self.texts.text(t), lp)
            out["top_logprobs"].append(top)
        return out

    @staticmethod
    def join(blocks: Sequence[dict]) -> dict:
        return {key: [v for b in blocks for v in b[key]] for key in
                ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


def chat_logprobs(texts: TokenText, entries: Sequence[TokenLogprob], top: int) -> dict:
    """{content: [...]} for these tokens, each with its `top` most likely alternatives."""
    def one(token: int, logprob: float) -> dict:
        return {"token": texts.text(token), "logprob": logprob, "bytes": list(texts.bytes(token))}

    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top[:top]]}
                        for e in entries]}


def completion_chunk(rid: str, model: str, index: int, text: str, reason: str | None,
                     logprobs: dict | None = None) -> dict:
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [choice]}


def chat_chunk(rid: str, model: str, index: int, text: str | None, reason: str | None,
               logprobs: dict | None = None) -> dict:
    """A chat delta; text None gives the opening chunk that carries the assistant role."""
    delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [choice]}


def usage_chunk(rid: str, model: str, kind: str, prompt: int, completion: int) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt, completion)}


def completion_response(rid: str, model: str, choices: list[dict], prompt: int, completion: int) -> dict:
    """choices: {text, finish_reason, logprobs} per choice, in index order."""
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, **c} for i, c in enumerate(choices)], "usage": usage(prompt, completion)}


def chat_response(rid: str, model: str, choices: list[dict], prompt: int, completion: int) -> dict:
    """choices: {text, finish_reason, logprobs} per choice, in index order."""
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]},
                         "logprobs": c["logprobs"], "finish_reason": c["finish_reason"]}
                        for i, c in enumerate(choices)],
            "usage": usage(prompt, completion)}
