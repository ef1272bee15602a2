"""What the HTTP routes call: model names, prompts to token ids, limits, and the engine's output as async events."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress

from lorakit.core.errors import LoraError
from lorakit.serve.engine import Engine, Event
from lorakit.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    ServeError,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    new_id,
    usage_chunk,
)
from lorakit.serve.sampling import SamplingParams


class Service:
    """One served base model and its adapters, behind the OpenAI-compatible API."""

    def __init__(self, engine: Engine, base_name: str, base_path: str | None = None):
        self.engine = engine
        self.pool = engine.pool
        self.tokenizer = engine.tokenizer
        self.base_name = base_name
        self.base_path = base_path or base_name
        self._box: Mailbox | None = None

    # ---- models ----

    def models(self) -> dict:
        """The /v1/models listing: the base model (unless merged away) and every adapter, parent = base."""
        ctx = self.engine.max_context
        data = [] if self.engine.merged else [_card(self.base_name, self.base_path, None, ctx)]
        for name in self.pool.names():
            entry = self.pool.entries.get(name)
            data.append(_card(name, str(entry.path) if entry else name, self.base_name, ctx))
        return {"object": "list", "data": data}

    def resolve(self, model: str) -> str | None:
        """The adapter a request's `model` names (None: the base model); 404 listing what exists otherwise."""
        if model == self.base_name and not self.engine.merged:
            return None
        if self.pool.contains(model) or model == self.engine.merged:
            return model
        available = [m["id"] for m in self.models()["data"]]
        hint = f" (adapter {self.engine.merged!r} is merged into the weights)" if self.engine.merged else ""
        raise ServeError(404, f"The model `{model}` does not exist. Available models: {available}{hint}", "model")

    async def load_adapter(self, name: str, path: str) -> None:
        if self.engine.merged:
            raise ServeError(400, "this server runs with --merge, which serves one merged adapter; restart without "
                                  "--merge to load adapters at runtime")
        if name == self.base_name:
            raise ServeError(400, f"lora_name {name!r} is the base model's name; choose another", "lora_name")
        try:
            await asyncio.wrap_future(self.engine.call(lambda: self.pool.add(name, path)))
        except LoraError as e:
            raise ServeError(400, f"adapter {name!r} was not loaded: {e}", "lora_path") from e

    async def unload_adapter(self, name: str) -> None:
        if not self.pool.contains(name):
            raise ServeError(404, f"The lora adapter '{name}' cannot be found. Loaded: {self.pool.names()}",
                             "lora_name")
        await asyncio.wrap_future(self.engine.call(lambda: self.pool.remove(name)))

    # ---- generation ----

    def completion(self, req: CompletionRequest, disconnected: Callable[[], Awaitable[bool]]):
        """A response dict, or an async iterator of SSE lines when req.stream."""
        adapter = self.resolve(req.model)
        prompts = self._completion_prompts(req.prompt)
        limits = [self._max_tokens(p, req.max_tokens, 16) for p in prompts]
        jobs = [(p, self._params(req, m, k)) for p, m in zip(prompts, limits, strict=True) for k in range(req.n)]
        rid = new_id("cmpl")
        prompt_tokens = sum(len(p) for p in prompts)
        if req.stream:
            return self._sse(rid, req, adapter, jobs, "text_completion", prompt_tokens,
                             lambda i, e: completion_chunk(rid, req.model, i, e))
        return self._collect(rid, req, adapter, jobs, completion_response, disconnected, prompt_tokens)

    def chat(self, req: ChatRequest, disconnected: Callable[[], Awaitable[bool]]):
        adapter = self.resolve(req.model)
        prompt = self._chat_prompt(req)
        limit = self._max_tokens(prompt, req.max_completion_tokens or req.max_tokens, None)
        jobs = [(prompt, self._params(req, limit, k)) for k in range(req.n)]
        rid = new_id("chatcmpl")
        if req.stream:
            return self._sse(rid, req, adapter, jobs, "chat.completion.chunk", len(prompt),
                             lambda i, e: chat_chunk(rid, req.model, i, e), opening=True)
        return self._collect(rid, req, adapter, jobs, chat_response, disconnected, len(prompt))

    def _completion_prompts(self, prompt: str | list) -> list[list[int]]:
        if isinstance(prompt, str):
            prompts = [self.tokenizer.encode(prompt)]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [list(prompt)]
        else:
            prompts = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompt]
        if not prompts:
            raise ServeError(400, "prompt is an empty list; give a string or a list of token ids", "prompt")
        vocab = self.engine.model.config.vocab_size
        out = []
        for p in prompts:
            if not p:
                if self.tokenizer.bos_token_id is None:
                    raise ServeError(400, "the prompt is empty and the tokenizer has no BOS token to start from",
                                     "prompt")
                p = [self.tokenizer.bos_token_id]
            if any(t < 0 or t >= vocab for t in p):
                raise ServeError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
            out.append(p)
        return out

    def _chat_prompt(self, req: ChatRequest) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ServeError(400, f"{self.base_name}'s tokenizer has no chat template; use /v1/completions",
                             "messages")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _max_tokens(self, prompt: list[int], asked: int | None, default: int | None) -> int:
        """max_tokens for a prompt; 400 with the limits when prompt + completion would not fit the context."""
        ctx = self.engine.max_context
        want = asked if asked is not None else (default if default is not None else ctx - len(prompt))
        if len(prompt) >= ctx or len(prompt) + want > ctx:
            raise ServeError(
                400,
                f"This model's maximum context length is {ctx} tokens. However, you requested {len(prompt) + want} "
                f"tokens ({len(prompt)} in the prompt, {want} for the completion). Please reduce the length of the "
                f"prompt or max_tokens.",
                "max_tokens" if len(prompt) < ctx else "prompt",
            )
        return want

    def _params(self, req: CompletionRequest | ChatRequest, max_tokens: int, k: int) -> SamplingParams:
        # With n > 1 and a seed, choice k uses seed + k: reproducible, yet the n samples differ.
        seed = None if req.seed is None else req.seed + k
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        try:
            return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, stop=stop,
                                  seed=seed, ignore_eos=req.ignore_eos)
        except LoraError as e:
            raise ServeError(400, str(e)) from e

    async def _events(self, adapter: str | None, jobs: list[tuple[list[int], SamplingParams]]
                      ) -> AsyncIterator[tuple[int, Event]]:
        """(choice index, event) as the engine produces them; leaving early (a disconnect) cancels every job."""
        queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        mailbox = self._mailbox(asyncio.get_running_loop())

        def listener(i: int) -> Callable[[Event], None]:
            return lambda event: mailbox.put(queue, (i, event))

        requests = [self.engine.submit(p, adapter, params, listener(i)) for i, (p, params) in enumerate(jobs)]
        try:
            left = len(requests)
            while left:
                i, event = await queue.get()
                left -= event.finish_reason is not None
                yield i, event
        finally:
            for r in requests:
                self.engine.cancel(r)

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> Mailbox:
        if self._box is None or self._box.loop is not loop:
            self._box = Mailbox(loop)
        return self._box

    async def _sse(self, rid, req, adapter, jobs, kind, prompt_tokens, chunk, opening=False) -> AsyncIterator[str]:
        if opening:
            for i in range(len(jobs)):
                yield _sse_line(chunk(i, None))
        completion = 0
        events = self._events(adapter, jobs)
        try:
            async for i, event in events:
                completion += event.completion_tokens
                if event.text or event.finish_reason:
                    yield _sse_line(chunk(i, event))
        finally:
            await events.aclose()
        if req.stream_options and req.stream_options.include_usage:
            yield _sse_line(usage_chunk(rid, req.model, kind, prompt_tokens, completion))
        yield "data: [DONE]\n\n"

    async def _collect(self, rid, req, adapter, jobs, build, disconnected, prompt_tokens) -> dict:
        texts = [""] * len(jobs)
        finals: list[Event | None] = [None] * len(jobs)
        events = self._events(adapter, jobs)
        watcher = asyncio.create_task(_wait_for_disconnect(disconnected))
        try:
            async for i, event in _until(events, watcher):
                texts[i] += event.text
                if event.finish_reason:
                    finals[i] = event
        finally:
            watcher.cancel()
            await events.aclose()
        if any(f is None for f in finals):
            raise ServeError(499, "the client disconnected")
        errors = [f.error for f in finals if f.error]
        if errors:
            raise ServeError(500, errors[0])
        return build(rid, req.model, texts, finals, prompt_tokens)


class Mailbox:
    """Hands the engine thread's events to the event loop, waking the loop once per burst instead of per event.

    A decode step emits one event per running row; waking the loop for each (call_soon_threadsafe) made the loop
    thread contend with the engine for the GIL and the two cores several times per step.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: deque[tuple[asyncio.Queue, object]] = deque()
        self.lock = threading.Lock()
        self.scheduled = False

    def put(self, queue: asyncio.Queue, item: object) -> None:
        with self.lock:
            self.items.append((queue, item))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: its listeners are gone; the engine cancels the request
            with self.lock:
                self.scheduled = False
            raise

    def _deliver(self) -> None:
        with self.lock:
            items, self.items = self.items, deque()
            self.scheduled = False
        for queue, item in items:
            queue.put_nowait(item)


def _card(name: str, root: str, parent: str | None, ctx: int) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lorakit", "root": root, "parent": parent,
            "max_model_len": ctx}


def _sse_line(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _wait_for_disconnect(disconnected: Callable[[], Awaitable[bool]]) -> None:
    while not await disconnected():
        await asyncio.sleep(0.25)


async def _until(events: AsyncIterator[tuple[int, Event]], watcher: asyncio.Task) -> AsyncIterator[tuple[int, Event]]:
    """Events until they end or the watcher finishes (the client went away)."""
    while True:
        nxt = asyncio.ensure_future(anext(events, None))
        done, _ = await asyncio.wait({nxt, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if nxt not in done:
            nxt.cancel()
            with suppress(asyncio.CancelledError):
                await nxt
            return
        item = nxt.result()
        if item is None:
            return
        yield item

