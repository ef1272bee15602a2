"""The batch under the engine: waiting, part-prefilled and running requests for one model over its adapter pool,
advanced one step at a time by a single thread (engine.Engine puts it on a thread behind a thread-safe API).

Each step: run queued calls (adapter loads), one prefill pass of at most prefill_chunk prompt tokens (the next
chunks of prompts being prefilled, then of waiting requests admitted into the batch), then one decode step for all
running rows (inside the prefill pass where the backend allows it). Long prompts are prefilled over several steps,
so running rows get a token between any two chunks. Finished and cancelled rows leave between steps. A failure one
request causes ends that request alone (see _guarded). The forward passes are a Backend's (backend.py): the lean
bf16 forward for bf16 Llama models on the CPU where its kernels are built (llama.LeanBackend: a request's output
never depends on the batch), else the transformers forward (hf.TransformersBackend).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

import lorakit
from lorakit.serve.backend import Backend, Chunk
from lorakit.serve.hf import TransformersBackend
from lorakit.serve.llama import LeanBackend, unsupported
from lorakit.serve.metrics import Metrics
from lorakit.serve.pool import AdapterPool
from lorakit.serve.request import Event, Request, logprobs_of
from lorakit.serve.sampling import TokenLogprob, choose_tokens

PREFILL_CHUNK = 512  # default prefill_chunk: see Batcher.__init__ and BENCHMARKS.md


class Batcher:
    """Requests of one model over its adapter pool, stepped by one thread: admission, prefill, decode, endings."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        pool: AdapterPool,
        max_batch: int = 64,
        max_context: int | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
        metrics: Metrics | None = None,
        merged: str | None = None,
        lean: bool | None = None,
    ):
        """lean: use the lean bf16 forward (True), the transformers forward (False), or the lean one whenever the
        model is a bf16 Llama on the CPU and its kernels are built (None)."""
        self.model = model
        self.tokenizer = tokenizer
        self.pool = pool
        self.max_batch = max_batch
        self.max_context = max_context or context_length(model)
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1 (got {prefill_chunk})")
        self.prefill_chunk = prefill_chunk
        """Most prompt tokens in one prefill pass (for a padded backend: rows x the longest), so newcomers never
        stall running rows for long: running rows get a token between any two passes."""
        self.metrics = metrics or Metrics()
        self.merged = merged
        """With --merge: the one adapter merged into the weights, served by plain forwards."""
        self.device = next(model.parameters()).device
        self.eos = eos_ids(model, tokenizer)
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []
        """Admitted requests whose prompts are part-way through prefill, oldest first."""
        self.running: list[Request] = []
        self._logprob_rows = False  # whether a running row asks for logprobs (set when the rows change)
        if lean is None:
            lean = next(model.parameters()).dtype == torch.bfloat16 and unsupported(model) is None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.backend: Backend = LeanBackend(model) if lean else TransformersBackend(model, pad, merged is not None)
        # Adapters are checked against this forward as they load (AdapterPool.check), those loaded already here.
        pool.check = self.backend.check
        for entry in list(pool.entries.values()):
            if entry.resident and entry.name != merged:
                self.backend.check(entry.key)
        self.calls: deque[tuple[Callable[[], object], Future]] = deque()
        self._wake = threading.Condition()
        """Guards `waiting` and `calls` against other threads, and wakes the thread that steps the batch."""

    def step(self) -> None:
        """One scheduling iteration: calls, one prefill pass (with admissions), one decode step for all running rows
        (unless they took it in the prefill pass)."""
        try:
            self._run_calls()
            self._drop_cancelled()
            if not self._prefill(self._schedule()) and self.running:
                self._decode()
        finally:
            self._set_gauges()

    def _set_gauges(self) -> None:
        self.metrics.set_gauges(waiting=len(self.waiting), running=len(self.running) + len(self.prefilling),
                                adapters=sum(e.resident for e in self.pool.entries.values()),
                                loads=self.pool.loads, evictions=self.pool.evictions)

    def run_until_idle(self) -> None:
        """Step until nothing is waiting or running (for tests and benchmarks that drive the engine directly)."""
        while self.waiting or self.prefilling or self.running or self.calls:
            self.step()

    def _run_calls(self) -> None:
        while self.calls:
            with self._wake:
                fn, future = self.calls.popleft()
            try:
                future.set_result(fn())
            except BaseException as e:  # the caller gets the exception, the engine goes on
                future.set_exception(e)

    def _drop_cancelled(self) -> None:
        with self._wake:  # submit() appends from other threads; iterating needs the deque to hold still
            dropped = [s for s in self.waiting if s.cancelled]
            for seq in dropped:
                self.waiting.remove(seq)
        gone = [s for s in self.running if s.cancelled]
        halfway = [s for s in self.prefilling if s.cancelled]
        for seq in dropped + gone + halfway:
            self._finish(seq, "cancelled", "")
        if gone:
            self._keep([s for s in self.running if not s.cancelled])
        if halfway:
            self.prefilling = [s for s in self.prefilling if not s.cancelled]
            self.backend.release(halfway)

    def _schedule(self) -> list[Chunk]:
        """This step's prefill pass: the next chunk of each prompt being prefilled, oldest first, then the first
        chunks of waiting requests admitted into the batch (up to max_batch rows), within prefill_chunk tokens
        (for a padded backend: chunks x the longest). A request whose adapter cannot fit yet keeps its place in
        line."""
        chunks: list[Chunk] = []
        used = longest = 0

        def room(left: int) -> int:  # most tokens of one more chunk that keep the pass within prefill_chunk
            if self.backend.padded:
                k = len(chunks) + 1
                return min(left, self.prefill_chunk // k) if k * longest <= self.prefill_chunk else 0
            return min(left, self.prefill_chunk - used)

        def take(seq: Request, n: int) -> None:
            nonlocal used, longest
            chunks.append(Chunk(seq, seq.prefilled, seq.prefilled + n, seq.params.prompt_logprobs is not None))
            used, longest = used + n, max(longest, n)

        for seq in self.prefilling:
            n = room(len(seq.prompt) - seq.prefilled)
            if n <= 0:
                return chunks
            take(seq, n)
        blocked: list[Request] = []
        while self.waiting and len(self.running) + len(self.prefilling) < self.max_batch:
            n = room(len(self.waiting[0].prompt))
            if n <= 0:
                break
            seq = self.waiting.popleft()
            if not self._acquire(seq):
                blocked.append(seq)
            elif not seq.finished and self._start(seq):
                self.prefilling.append(seq)
                take(seq, n)
        self.waiting.extendleft(reversed(blocked))
        return chunks

    def _start(self, seq: Request) -> bool:
        """Give an admitted request its random generator; False (the request ended) for a seed torch cannot take."""
        try:
            seq.generator = seq.params.generator(self.device)
        except Exception as e:
            self._finish(seq, "error", "", error=f"invalid seed {seq.params.seed!r}: {e}", status=400)
            return False
        return True

    def _acquire(self, seq: Request) -> bool:
        """Reserve the request's adapter (loading it if evicted); False if it must wait for room.

        A request whose adapter is gone, fails to load or cannot run here is finished with an error (whatever the
        failure: a request popped from the queue must end somewhere).
        """
        if seq.adapter is None or seq.adapter == self.merged:
            return True
        if not self.pool.contains(seq.adapter):
            self._finish(seq, "error", "", error=f"adapter {seq.adapter!r} was unloaded before the request started; "
                                                 f"load it again", status=404)
            return True
        try:
            seq.key = self.pool.acquire(seq.adapter)
            if seq.key is not None:
                self.backend.check(seq.key)
        except Exception as e:
            what = str(e) if isinstance(e, lorakit.LoraError) else f"{type(e).__name__}: {e}"
            self._finish(seq, "error", "", error=f"adapter {seq.adapter!r} could not be loaded: {what}", status=400)
            return True
        return seq.key is not None

    def _prefill(self, chunks: list[Chunk]) -> bool:
        """Run a prefill pass; requests whose prompt it completes join the running rows with their first token.
        True when the running rows took this step's token in the same pass (where the backend's decode_in_prefill
        allows it: one pass over the weights instead of a prefill and a decode step)."""
        if not chunks:
            return False
        carried = list(self.running) if self.backend.decode_in_prefill else []
        done = self._guarded(self.backend.prefill, chunks, carried)
        if done is None:
            return bool(carried)
        (logits, every), chunks, carried = done
        ready, rows = [], list(carried)
        for i, (chunk, full) in enumerate(zip(chunks, every, strict=True)):
            seq = chunk.row
            seq.prefilled = chunk.end
            if full is not None:
                try:
                    seq.add_prompt_logprobs(chunk.start, chunk.end, full)
                except Exception as e:
                    self._fail(seq, f"the request failed computing its prompt logprobs ({type(e).__name__}: {e})",
                               500)
                    continue
            if chunk.end == len(seq.prompt):
                ready.append(len(carried) + i)
                rows.append(seq)
        if len(rows) > len(carried):
            joined = {id(s) for s in rows[len(carried) :]}
            self.prefilling = [s for s in self.prefilling if id(s) not in joined]
            self.running.extend(rows[len(carried) :])
            self._logprob_rows = any(s.params.logprobs is not None for s in self.running)
        if carried:
            self.metrics.observe_batch(len(rows))
        if rows:
            keep = list(range(len(carried))) + ready
            self._emit(rows, logits if len(keep) == logits.shape[0] else logits[torch.tensor(keep)])
        return bool(carried)

    def _decode(self) -> None:
        done = self._guarded(lambda chunks, rows: self.backend.decode(rows), [], list(self.running))
        if done is not None:
            logits, _, rows = done
            self.metrics.observe_batch(len(rows))
            self._emit(rows, logits)

    def _guarded(self, run: Callable[[list[Chunk], list[Request]], object], chunks: list[Chunk],
                 rows: list[Request]) -> tuple[object, list[Chunk], list[Request]] | None:
        """(run(chunks, rows), the chunks and rows it ran) for a pass (a prefill, a decode step). When the pass
        raises, each request's part runs on its own (Backend.probe): those that fail alone end with their error
        and the pass reruns without them. When none fails alone, or the rerun fails too, the failure is no single
        request's: every request in the pass ends with it. None when nothing is left to run."""
        try:
            return run(chunks, rows), chunks, rows
        except Exception as e:
            failure = e
        culprits: dict[int, tuple[Request, Exception]] = {}
        for seq, chunk in [(c.row, c) for c in chunks] + [(r, None) for r in rows]:
            try:
                self.backend.probe(seq, chunk)
            except Exception as e:
                culprits[id(seq)] = (seq, e)
        for seq, e in culprits.values():
            self._fail(seq, f"the request failed in the model's forward pass ({type(e).__name__}: {e}); the other "
                            f"requests went on", 500)
        chunks = [c for c in chunks if id(c.row) not in culprits]
        rows = [r for r in rows if id(r) not in culprits]
        if culprits:
            if not chunks and not rows:
                return None
            try:
                return run(chunks, rows), chunks, rows
            except Exception as e:
                failure = e
        for seq in [c.row for c in chunks] + rows:
            self._fail(seq, f"the engine failed: {type(failure).__name__}: {failure}", 500)
        return None

    def _fail(self, seq: Request, error: str, status: int) -> None:
        """End a request with an error, wherever it is; the backend forgets its rows."""
        self._finish(seq, "error", "", error=error, status=status)
        if any(s is seq for s in self.running):
            self._keep([s for s in self.running if s is not seq])
        else:
            self.prefilling = [s for s in self.prefilling if s is not seq]
            self.backend.release([seq])

    def _emit(self, rows: list[Request], logits: torch.Tensor) -> None:
        failed: dict[int, Exception] = {}
        tokens = choose_tokens(logits, [s.params for s in rows], [s.generator for s in rows], failed).tolist()
        logprobs = logprobs_of(rows, logits, tokens) if self._logprob_rows else {}
        done: list[Request] = []
        now = time.monotonic()
        for i, (seq, token) in enumerate(zip(rows, tokens, strict=True)):
            if seq.finished:  # failed since the pass
                continue
            try:
                if i in failed:
                    raise failed[i]
                if self._next(seq, token, logprobs.get(i), now):
                    done.append(seq)
            except Exception as e:  # this request's sampling or text: it alone ends
                self._finish(seq, "error", "", error=f"the request failed choosing its next token "
                                                     f"({type(e).__name__}: {e})", status=500)
                done.append(seq)
        if done:
            self._keep([s for s in self.running if s not in done])

    def _next(self, seq: Request, token: int, logprob: TokenLogprob | None, now: float) -> bool:
        """Give the request its next token; True when that ends it."""
        extra = {}
        if logprob is not None:
            extra["logprobs"] = [logprob]
        if seq.first_token is None:
            seq.first_token = now
            self.metrics.observe_first_token(now - seq.submitted)
            if seq.prompt_logprobs is not None:
                extra["prompt_logprobs"] = seq.prompt_logprobs
        text, reason = seq.take(token, self.eos, self.max_context)
        if reason is None:
            self._send(seq, Event(text, [token], **extra))
            return False
        self._finish(seq, reason, text, token=token, **extra)
        return True

    def _keep(self, rows: list[Request]) -> None:
        """Keep these running rows (in their order); the backend forgets the others."""
        kept = {id(s) for s in rows}
        self.backend.release([s for s in self.running if id(s) not in kept])
        self.running = rows
        self._logprob_rows = any(s.params.logprobs is not None for s in rows)

    def _finish(self, seq: Request, reason: str, text: str, token: int | None = None, error: str | None = None,
                status: int | None = None, **extra) -> None:
        if seq.finished:
            return
        if seq.key is not None:
            self.pool.release(seq.key)
        seq.finished = True
        self.metrics.observe_finish(seq.adapter, reason, len(seq.prompt), len(seq.output),
                                    time.monotonic() - seq.submitted)
        self._send(seq, Event(text, [] if token is None else [token], reason, error, status,
                              len(seq.prompt), len(seq.output), **extra))

    def _send(self, seq: Request, event: Event) -> None:
        try:
            seq.on_event(event)
        except Exception:  # a listener that is gone (closed event loop) must not stop the engine
            seq.cancelled = True

    def _busy(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    def _fail_all(self, error: str, status: int) -> None:
        with self._wake:
            waiting = list(self.waiting)
            self.waiting.clear()
        for seq in waiting + self.prefilling + self.running:
            self._finish(seq, "error", "", error=error, status=status)
        self.prefilling = []
        self.running = []
        self._logprob_rows = False
        self.backend.reset()
        self._set_gauges()


def context_length(model: nn.Module) -> int:
    """The model's context window in tokens, from its config."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return 2048


def eos_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Token ids that end a generation: the generation config's eos (one or a list) and the tokenizer's."""
    found: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(int(v) for v in value)
    return found
