"""The OpenAI-compatible wire format: request schemas (validated by pydantic) and response/chunk builders."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lorakit.core.errors import LoraError
from lorakit.serve.engine import Event


class ServeError(LoraError):
    """A request the server refuses; becomes an OpenAI-style error body with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def error_body(status: int, message: str, param: str | None = None) -> dict:
    kind = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}.get(status, "InternalServerError")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by completions and chat; unknown fields (user, logit_bias, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    """vLLM's extension: generate exactly max_tokens tokens."""


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class LoadLoraRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoraRequest(BaseModel):
    lora_name: str = Field(min_length=1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_chunk(rid: str, model: str, index: int, event: Event) -> dict:
    choice = {"index": index, "text": event.text, "logprobs": None, "finish_reason": _reason(event)}
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [choice]}


def chat_chunk(rid: str, model: str, index: int, event: Event | None) -> dict:
    """A chat delta; event None gives the opening chunk that carries the assistant role."""
    delta = {"role": "assistant", "content": ""} if event is None else ({"content": event.text} if event.text else {})
    reason = None if event is None else _reason(event)
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [choice]}


def usage_chunk(rid: str, model: str, kind: str, prompt: int, completion: int) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt, completion)}


def completion_response(rid: str, model: str, texts: list[str], events: list[Event], prompt_tokens: int) -> dict:
    choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": _reason(e)}
               for i, (t, e) in enumerate(zip(texts, events, strict=True))]
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices,
            "usage": usage(prompt_tokens, sum(e.completion_tokens for e in events))}


def chat_response(rid: str, model: str, texts: list[str], events: list[Event], prompt_tokens: int) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                "finish_reason": _reason(e)} for i, (t, e) in enumerate(zip(texts, events, strict=True))]
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model, "choices": choices,
            "usage": usage(prompt_tokens, sum(e.completion_tokens for e in events))}


def _reason(event: Event) -> str | None:
    """OpenAI knows only stop and length; an error or cancel reaches a client as "abort" (vLLM's spelling)."""
    if event.finish_reason in (None, "stop", "length"):
        return event.finish_reason
    return "abort"
