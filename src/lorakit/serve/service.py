"""What the HTTP routes call: model names, request bodies to token ids and limits, the engine's output as
OpenAI responses or server-sent events.

`prepare_*` parse, validate and tokenize a raw body; they are plain functions the routes run on a worker thread,
so a large body never blocks the event loop. `respond` submits the prepared jobs and turns their events into the
response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from lorakit.core.errors import LoraError
from lorakit.serve.delivery import Mailbox, Run, until, wait_for_disconnect
from lorakit.serve.engine import Engine, Event, ShuttingDown
from lorakit.serve.pool import AdapterNotFound
from lorakit.serve.protocol import (
    MAX_PROMPTS,
    MAX_ROWS,
    ChatRequest,
    CompletionRequest,
    ServeError,
    parse,
)
from lorakit.serve.responses import (
    CompletionLogprobs,
    chat_chunk,
    chat_logprobs,
    chat_response,
    completion_chunk,
    completion_response,
    finish_reason,
    new_id,
    sse,
    sse_error,
    usage_chunk,
)
from lorakit.serve.sampling import SEEDS, SamplingParams
from lorakit.serve.text import TokenText

log = logging.getLogger("lorakit.serve")
HEAD_CHARS = 16
"""A prompt longer than context x this many characters is first tokenized only that far: if its head alone
overflows the context, the rest is never tokenized (a multi-megabyte prompt is refused at once)."""


@dataclass
class Job:
    """One choice to generate: its prompt, sampling, and (completions with echo) the prompt text to return."""

    prompt: list[int]
    params: SamplingParams
    echo: str | None = None


@dataclass
class Plan:
    """A parsed, validated, tokenized generation request, ready to submit."""

    chat: bool
    rid: str
    req: CompletionRequest | ChatRequest
    adapter: str | None
    jobs: list[Job]
    prompt_tokens: int


class Service:
    """One served base model and its adapters, behind the OpenAI-compatible API."""

    def __init__(self, engine: Engine, base_name: str, base_path: str | None = None):
        self.engine = engine
        self.pool = engine.pool
        self.tokenizer = engine.tokenizer
        self.texts = TokenText(engine.tokenizer)
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
        if "\x00" in path or "\x00" in name:
            raise ServeError(400, "lora_name and lora_path must not contain NUL characters", "lora_path")
        try:
            await asyncio.wrap_future(self.engine.call(lambda: self.pool.add(name, path)))
        except LoraError as e:
            raise ServeError(400, f"adapter {name!r} was not loaded: {e}", "lora_path") from e
        except (OSError, ValueError) as e:  # a path the OS refuses (too long, unreadable): say no more about it
            raise ServeError(400, f"adapter {name!r} was not loaded: lora_path {path[:100]!r} cannot be read "
                                  f"({type(e).__name__}); give a directory under the adapter root", "lora_path") from e

    async def unload_adapter(self, name: str) -> None:
        """Unload adapter `name`; of concurrent unloads of one adapter, one succeeds and the others are 404s."""
        try:
            await asyncio.wrap_future(self.engine.call(lambda: self.pool.remove(name)))
        except AdapterNotFound:
            raise ServeError(404, f"The lora adapter '{name}' cannot be found. Loaded: {self.pool.names()}",
                             "lora_name") from None

    # ---- preparing (any thread) ----

    def prepare_completion(self, body: bytes) -> Plan:
        """A /v1/completions body parsed, checked and tokenized; ServeError for anything refused."""
        req = parse(CompletionRequest, body)
        adapter = self.resolve(req.model)
        texts = self._prompt_texts(req.prompt)
        rows = len(texts) * req.choices
        if rows > MAX_ROWS:
            raise ServeError(400, f"this request asks for {len(texts)} prompts x n={req.choices} = {rows} "
                                  f"sequences; at most {MAX_ROWS} per request: split it", "n")
        prompts = [self._prompt_ids(p) for p in texts]
        echo = bool(req.echo)
        want = req.logprobs
        jobs = []
        for p, text in zip(prompts, texts, strict=True):
            limit = self._max_tokens(p, req.max_tokens, 16)
            shown = (text if isinstance(text, str) else self.tokenizer.decode(p)) if echo else None
            jobs += [Job(p, self._params(req, limit, k, logprobs=want, prompt_logprobs=want if echo else None),
                         shown) for k in range(req.choices)]
        return Plan(False, new_id("cmpl"), req, adapter, jobs, sum(len(p) for p in prompts))

    def prepare_chat(self, body: bytes) -> Plan:
        """A /v1/chat/completions body parsed, checked and rendered through the chat template."""
        req = parse(ChatRequest, body)
        adapter = self.resolve(req.model)
        prompt = self._chat_prompt(req)
        limit = self._max_tokens(prompt, req.max_completion_tokens or req.max_tokens, None)
        want = (req.top_logprobs or 0) if req.logprobs else None
        jobs = [Job(prompt, self._params(req, limit, k, logprobs=want)) for k in range(req.choices)]
        return Plan(True, new_id("chatcmpl"), req, adapter, jobs, len(prompt))

    def _prompt_texts(self, prompt: str | list) -> list[str | list[int]]:
        """The request's prompts, each a string or a list of token ids."""
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise ServeError(400, "prompt is an empty list; give a string or a list of token ids", "prompt")
        if isinstance(prompt[0], int):  # the schema admits only lists of one kind
            return [prompt]
        if len(prompt) > MAX_PROMPTS:
            raise ServeError(400, f"prompt holds {len(prompt)} prompts; at most {MAX_PROMPTS} per request: split "
                                  f"it", "prompt")
        return list(prompt)

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        ids = self._encode(prompt) if isinstance(prompt, str) else prompt
        vocab = self.engine.model.config.vocab_size
        if not ids:
            if self.tokenizer.bos_token_id is None:
                raise ServeError(400, "the prompt is empty and the tokenizer has no BOS token to start from", "prompt")
            return [self.tokenizer.bos_token_id]
        if min(ids) < 0 or max(ids) >= vocab:
            raise ServeError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
        return ids

    def _encode(self, text: str, **kw) -> list[int]:
        ctx = self.engine.max_context
        head = ctx * HEAD_CHARS
        if len(text) > head and len(self.tokenizer.encode(text[:head], **kw)) > ctx:
            raise ServeError(400, f"This model's maximum context length is {ctx} tokens, and the prompt's first "
                                  f"{head} of {len(text)} characters alone exceed it. Please shorten the prompt.",
                             "prompt")
        return self.tokenizer.encode(text, **kw)

    def _chat_prompt(self, req: ChatRequest) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ServeError(400, f"{self.base_name}'s tokenizer has no chat template; use /v1/completions",
                             "messages")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self._encode(text, add_special_tokens=False)

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

    def _params(self, req: CompletionRequest | ChatRequest, max_tokens: int, k: int, logprobs: int | None,
                prompt_logprobs: int | None = None) -> SamplingParams:
        # With n > 1 and a seed, choice k uses seed + k: reproducible, yet the n samples differ. A negative seed
        # is read as its two's complement, as torch's manual_seed does.
        seed = None if req.seed is None else (req.seed + k) % SEEDS
        temperature = 1.0 if req.temperature is None else req.temperature
        try:
            return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=req.top_p or 1.0,
                                  stop=req.stops(), seed=seed, ignore_eos=bool(req.ignore_eos), logprobs=logprobs,
                                  prompt_logprobs=prompt_logprobs)
        except LoraError as e:
            raise ServeError(400, str(e)) from e

    # ---- responding (the event loop) ----

    async def respond(self, plan: Plan, disconnected: Callable[[], Awaitable[bool]]) -> dict | AsyncIterator[str]:
        """Submit the plan's jobs; the response dict, or (req.stream) an async iterator of SSE lines."""
        run = self._submit(plan)
        if plan.req.stream:
            return self._stream(plan, run)
        return await self._collect(plan, run, disconnected)

    def _submit(self, plan: Plan) -> Run:
        queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        mailbox = self._mailbox(asyncio.get_running_loop())

        def listener(i: int) -> Callable[[Event], None]:
            return lambda event: mailbox.put(queue, (i, event))

        requests = []
        try:
            for i, job in enumerate(plan.jobs):
                requests.append(self.engine.submit(job.prompt, plan.adapter, job.params, listener(i)))
        except ShuttingDown as e:
            for r in requests:
                self.engine.cancel(r)
            raise ServeError(503, str(e)) from e
        return Run(self.engine, queue, requests)

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> Mailbox:
        if self._box is None or self._box.loop is not loop:
            self._box = Mailbox(loop)
        return self._box

    def _choices(self, plan: Plan) -> list[Choice]:
        return [Choice(self.texts, plan, job) for job in plan.jobs]

    async def _stream(self, plan: Plan, run: Run) -> AsyncIterator[str]:
        """SSE lines: every choice's pieces as they come; a request that fails sends an error event; [DONE]."""
        choices = self._choices(plan)
        try:
            for i, c in enumerate(choices):
                opening = c.opening()
                if opening is not None:
                    yield sse(plan_chunk(plan, i, *opening))
            async for i, event in run.events():
                if event.finish_reason == "error":
                    yield sse_error(event.status or 500, event.error or "the request failed")
                    break
                piece = choices[i].add(event)
                if piece is not None:
                    yield sse(plan_chunk(plan, i, *piece))
            else:
                if plan.req.include_usage:
                    kind = "chat.completion.chunk" if plan.chat else "text_completion"
                    yield sse(usage_chunk(plan.rid, plan.req.model, kind, plan.prompt_tokens,
                                          sum(c.completion_tokens for c in choices)))
        except Exception as e:  # the stream has started: the client learns of the failure in an error event
            log.exception("stream %s failed", plan.rid)
            yield sse_error(500, f"the server failed while streaming ({type(e).__name__}); the server log has "
                                 f"the details")
        finally:
            run.cancel()
        yield sse("[DONE]")

    async def _collect(self, plan: Plan, run: Run, disconnected: Callable[[], Awaitable[bool]]) -> dict:
        choices = self._choices(plan)
        watcher = asyncio.create_task(wait_for_disconnect(disconnected))
        try:
            for c in choices:
                c.opening()
            async for i, event in until(run.events(), watcher):
                if event.finish_reason == "error":
                    raise ServeError(event.status or 500, event.error or "the request failed")
                choices[i].add(event)
        finally:
            watcher.cancel()
            run.cancel()
        if any(c.final is None for c in choices):
            raise ServeError(499, "the client disconnected")
        build = chat_response if plan.chat else completion_response
        return build(plan.rid, plan.req.model, [c.result() for c in choices], plan.prompt_tokens,
                     sum(c.completion_tokens for c in choices))


def plan_chunk(plan: Plan, index: int, text: str | None, reason: str | None, logprobs: dict | None) -> dict:
    build = chat_chunk if plan.chat else completion_chunk
    return build(plan.rid, plan.req.model, index, text, reason, logprobs)


class Choice:
    """One choice's output as it arrives: its text, its logprobs, its final event."""

    def __init__(self, texts: TokenText, plan: Plan, job: Job):
        self.texts = texts
        self.chat = plan.chat
        self.job = job
        self.top = job.params.logprobs
        self.parts: list[str] = []
        self.logprobs: list = []
        self.final: Event | None = None
        self.completion_tokens = 0
        self.offsets = CompletionLogprobs(texts)

    def opening(self) -> tuple[str | None, None, dict | None] | None:
        """The chunk a stream opens this choice with (chat: the role; completions with echo: the prompt)."""
        if self.chat:
            return None, None, None
        if self.job.echo is None:
            return None
        self.parts.append(self.job.echo)
        return self.job.echo, None, None

    def add(self, event: Event) -> tuple[str | None, str | None, dict | None] | None:
        """Take an event; (text, finish_reason, logprobs) for a stream chunk, None when there is nothing to send."""
        self.completion_tokens = max(self.completion_tokens, event.completion_tokens)
        block = None
        if self.top is not None:
            block = self._logprobs(event)
            if block is not None:
                self.logprobs.append(block)
        self.parts.append(event.text)
        if event.finish_reason is not None:
            self.final = event
        if not (event.text or event.finish_reason or block):
            return None
        return event.text, finish_reason(event) if event.finish_reason else None, block

    def _logprobs(self, event: Event) -> dict | None:
        entries = event.logprobs or []
        blocks = []
        if event.prompt_logprobs is not None and not self.chat:
            blocks.append(self.offsets.block(event.prompt_logprobs, self.job.prompt))
            self.offsets.offset = len(self.job.echo or "")
        if entries:
            if self.chat:
                return chat_logprobs(self.texts, entries, self.top)
            blocks.append(self.offsets.block(entries, [e.token for e in entries]))
        return CompletionLogprobs.join(blocks) if blocks else None

    def result(self) -> dict:
        logprobs = None
        if self.top is not None:
            if self.chat:
                logprobs = {"content": [c for b in self.logprobs for c in b["content"]]}
            else:
                logprobs = CompletionLogprobs.join(self.logprobs)
        return {"text": "".join(self.parts), "finish_reason": finish_reason(self.final), "logprobs": logprobs}


def _card(name: str, root: str, parent: str | None, ctx: int) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lorakit", "root": root, "parent": parent,
            "max_model_len": ctx}
