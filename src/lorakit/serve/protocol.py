"""The OpenAI-compatible wire format: strict request schemas, their limits, and errors as OpenAI-shaped bodies.

Requests are parsed from the raw body with strict types (`"5"` is not a number, `"yes"` not a boolean), as
OpenAI's own API does. A field the schema does not know is refused with its name, and so is a known OpenAI or
vLLM field lorakit does not implement unless it carries that field's default: a client asking for
`best_of: 4` or a `logit_bias` must not get a silently different answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorakit.core.errors import LoraError

MAX_N = 16
"""Most choices per prompt (`n`)."""
MAX_PROMPTS = 64
"""Most prompts in one completions request."""
MAX_ROWS = 64
"""Most sequences one request may start (prompts x n): more would hold the whole batch."""
MAX_STOP = 16
"""Most stop strings per request."""
MAX_STOP_CHARS = 256
"""Longest stop string: text that could begin one is held back from a stream until it is clear."""
MAX_LOGPROBS = 5
"""Most alternatives per position in `logprobs` / `top_logprobs` (OpenAI's completions limit)."""
SEED_RANGE = (-(2**63), 2**63 - 1)
"""A seed is a signed 64-bit integer; with n > 1, choice k uses seed + k, which must stay in range too."""


class ServeError(LoraError):
    """A request the server refuses; becomes an OpenAI-style error body with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
               413: "RequestTooLargeError", 499: "ClientClosedRequest", 503: "ServiceUnavailableError"}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "InternalServerError"), "param": param,
                      "code": status}}


def _any(_: Any) -> bool:
    return True


def _one_of(*defaults: Any) -> Callable[[Any], bool]:
    return lambda value: any(value == d and type(value) is type(d) for d in defaults)


_NONE = _one_of(None)
_EMPTY = _one_of(None, [], {}, "")


class Strict(BaseModel):
    """A request object: strict JSON types; a field outside the schema is accepted only where OPTIONAL says its
    value is harmless (a default, or something that does not change the answer)."""

    model_config = ConfigDict(strict=True, extra="allow")
    OPTIONAL: ClassVar[dict[str, Callable[[Any], bool]]] = {}

    def refused(self, where: str = "") -> list[str]:
        """Each field outside the schema that the server would have to ignore, as `name=value (why)`."""
        out = []
        for name, value in (self.model_extra or {}).items():
            accepts = self.OPTIONAL.get(name)
            if accepts is None:
                out.append(f"{where}{name} (unknown field)")
            elif not accepts(value):
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                out.append(f"{where}{name}={shown} (not supported; omit it or send its default)")
        return out


SAMPLING_EXTRAS = {
    "frequency_penalty": _one_of(None, 0, 0.0),
    "presence_penalty": _one_of(None, 0, 0.0),
    "logit_bias": _EMPTY,
    "user": _any,
    "top_k": _one_of(None, -1, 0),
    "min_p": _one_of(None, 0, 0.0),
    "repetition_penalty": _one_of(None, 1, 1.0),
}


class StreamOptions(Strict):
    include_usage: bool | None = False


class _Sampling(Strict):
    """Fields shared by completions and chat; None means the default, as OpenAI's clients may send it."""

    model: str
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = False
    """vLLM's extension: generate exactly max_tokens tokens."""

    @property
    def choices(self) -> int:
        return self.n or 1

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def problems(self) -> list[tuple[str, str]]:
        """(param, message) for every limit this request breaks beyond its fields' own types and ranges."""
        out = []
        stops = self.stops()
        if len(stops) > MAX_STOP:
            out.append(("stop", f"stop has {len(stops)} strings; at most {MAX_STOP} are allowed"))
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            out.append(("stop", f"a stop string is longer than {MAX_STOP_CHARS} characters"))
        if any(not s for s in stops):
            out.append(("stop", "stop strings must not be empty"))
        if self.seed is not None and self.seed + self.choices - 1 > SEED_RANGE[1]:
            out.append(("seed", f"with n={self.choices}, choice k uses seed + k, which must stay at most "
                                f"{SEED_RANGE[1]} (2**63 - 1); give a smaller seed"))
        return out

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


Prompt = Annotated[str | list[int] | list[str] | list[list[int]], Field(union_mode="left_to_right")]
"""One text, one list of token ids, or several of either; list[int] is tried before list[str] because a long list
of token ids is the costly case."""


class CompletionRequest(_Sampling):
    OPTIONAL: ClassVar = {**SAMPLING_EXTRAS, "best_of": _one_of(None, 1), "suffix": _EMPTY}

    prompt: Prompt
    max_tokens: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    """Return the chosen token's log-probability and the top `logprobs` alternatives at each position."""
    echo: bool | None = False
    """Return the prompt before the completion (with logprobs: the prompt's too, the first one null)."""


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    OPTIONAL: ClassVar = {"name": _any, "refusal": _NONE, "tool_calls": _EMPTY, "function_call": _NONE,
                          "audio": _NONE, "annotations": _EMPTY, "tool_call_id": _NONE}

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    OPTIONAL: ClassVar = {
        **SAMPLING_EXTRAS, "tools": _EMPTY, "functions": _EMPTY, "tool_choice": _one_of(None, "none", "auto"),
        "function_call": _one_of(None, "none", "auto"), "parallel_tool_calls": _any,
        "response_format": lambda v: v is None or v == {"type": "text"}, "metadata": _any,
        "store": _one_of(None, False), "service_tier": _any, "modalities": lambda v: v in (None, ["text"]),
        "audio": _NONE, "prediction": _NONE, "reasoning_effort": _NONE, "verbosity": _NONE,
        "web_search_options": _NONE, "prompt_cache_key": _any, "safety_identifier": _any,
    }

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    """Return each output token's log-probability."""
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    """With logprobs: also the most likely alternatives at each position (OpenAI allows 20; lorakit 5)."""

    def refused(self, where: str = "") -> list[str]:
        return super().refused(where) + [r for i, m in enumerate(self.messages) for r in m.refused(f"messages.{i}.")]

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.top_logprobs is not None and not self.logprobs:
            out.append(("top_logprobs", "top_logprobs needs logprobs: true"))
        return out


class LoadLoraRequest(Strict):
    lora_name: str = Field(min_length=1, max_length=200)
    lora_path: str = Field(min_length=1, max_length=1024)


class UnloadLoraRequest(Strict):
    lora_name: str = Field(min_length=1, max_length=200)


R = TypeVar("R", bound=Strict)


def parse(schema: type[R], body: bytes) -> R:
    """The request in `body` (JSON bytes); ServeError 400 naming every bad, unknown or unsupported field.

    The JSON is read first and validated as Python objects: pydantic's JSON-mode validation of a long list of
    token ids took ten times longer, all of it holding the GIL that the event loop needs."""
    try:
        data = pydantic_core.from_json(body)
    except ValueError as e:
        why = str(e)
        hint = " (a string holds an unpaired UTF-16 surrogate or invalid UTF-8; send valid Unicode)" if any(
            w in why for w in ("surrogate", "unicode", "hex escape")) else ""
        raise ServeError(400, f"invalid request: the request body is not valid JSON: {why}{hint}") from None
    try:
        req = schema.model_validate(data)
    except ValidationError as e:
        problems = _problems(e)
        raise ServeError(400, "invalid request: " + "; ".join(p for _, p in problems), problems[0][0]) from None
    refused = req.refused()
    if refused:
        raise ServeError(400, "unsupported request fields: " + "; ".join(refused),
                         refused[0].split(" ")[0].split("=")[0])
    checks = req.problems() if isinstance(req, _Sampling) else []
    if checks:
        raise ServeError(400, "invalid request: " + "; ".join(m for _, m in checks), checks[0][0])
    return req


def _problems(error: ValidationError) -> list[tuple[str | None, str]]:
    """(param, `field: what is wrong`) per field; a union's failed alternatives become one `expected A or B`."""
    out: dict[str | None, str] = {}
    unions: dict[str, list[str]] = {}
    for err in error.errors(include_url=False):
        loc = err["loc"]
        if not loc:
            out.setdefault(None, "the request body must be a JSON object")
            continue
        branch = next((i for i, x in enumerate(loc) if _is_union_branch(x)), None)
        if branch is not None:
            field = ".".join(str(x) for x in loc[:branch])
            unions.setdefault(field, [])
            if loc[branch] not in unions[field]:
                unions[field].append(str(loc[branch]))
            continue
        field = ".".join(str(x) for x in loc)
        got = err.get("input")
        shown = f" (got {got!r})" if isinstance(got, int | float | bool | str) and len(repr(got)) <= 40 else ""
        out.setdefault(field, f"{field}: {err['msg']}{shown}")
    for field, branches in unions.items():
        out.setdefault(field, f"{field}: wrong type (expected {' or '.join(branches)})")
    return list(out.items())


def _is_union_branch(part: Any) -> bool:
    """pydantic names a union's alternative in an error's location by its type (`str`, `list[int]`)."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "none"))
