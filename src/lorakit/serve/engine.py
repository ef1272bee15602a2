"""Continuous batching for `lorakit serve`: one base model, many adapters, one forward pass per step for every
running row (batch.Batcher), on one thread behind an API that any thread may call: submit, cancel, call (run a
function between steps), drain and stop.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextvars import ContextVar

from torch import nn
from transformers import PreTrainedTokenizerBase

import lorakit
from lorakit.serve.batch import PREFILL_CHUNK, Batcher
from lorakit.serve.pool import AdapterPool
from lorakit.serve.request import Event, Request
from lorakit.serve.sampling import SamplingParams, TokenLogprob
from lorakit.serve.text import TextStream

__all__ = ["ARRIVAL", "PREFILL_CHUNK", "Engine", "Event", "Request", "ShuttingDown", "TokenLogprob"]

ARRIVAL: ContextVar[Callable[[], None] | None] = ContextVar("lorakit_arrival", default=None)
"""The current HTTP request's `Engine.arriving` callback; `submit` calls it (see there)."""


class ShuttingDown(lorakit.LoraError):
    """The engine is draining or stopped and takes no new requests."""


class Engine(Batcher):
    """A Batcher behind a thread-safe API: submit, cancel and call from any thread; `run` (or `start`) steps it."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pool: AdapterPool,
                 arrival_gap: float = 0.003, arrival_wait: float = 0.05, **kw):
        """kw: Batcher's (max_batch, max_context, prefill_chunk, metrics, merged, lean).

        arrival_gap, arrival_wait (seconds): when a request finds the engine idle, the engine waits until no
        request is on its way (see `arriving`) and none has been submitted for arrival_gap, at most arrival_wait
        in all, and prefills them together. Clients that send at once reach the engine over tens of milliseconds
        (the HTTP thread reads, validates and tokenizes them one by one): without the wait, a burst was prefilled
        as its first request and then the rest, a decode step between (BENCHMARKS.md). A lone request pays
        arrival_gap. 0 turns this off."""
        super().__init__(model, tokenizer, pool, **kw)
        self.arrival_gap = arrival_gap
        self.arrival_wait = arrival_wait
        self._arriving = 0
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stop = False
        self._closed = False  # draining or stopped: submit refuses

    # ---- called from any thread ----

    def submit(self, prompt: list[int], adapter: str | None, params: SamplingParams,
               on_event: Callable[[Event], None]) -> Request:
        """Queue a request; `on_event` is called on the engine's thread with each piece of output. ShuttingDown
        once the engine drains or has stopped."""
        seq = Request(next(self._ids), list(prompt), adapter, params, on_event, TextStream(self.tokenizer, params.stop))
        with self._wake:
            if self._closed:
                raise ShuttingDown("the server is shutting down and takes no new requests; retry on another "
                                   "instance or after it restarts")
            self.waiting.append(seq)
            self._wake.notify()
        arrived = ARRIVAL.get()
        if arrived is not None:
            arrived()
        return seq

    def arriving(self) -> Callable[[], None]:
        """Count one request that is on its way (HTTP has started reading it) so that an idle engine waits for it
        before prefilling (see __init__); returns the function that uncounts it, idempotent. `submit` calls the
        one in ARRIVAL, so the HTTP layer sets that for each request and calls it again when the request ends
        (it may fail before submitting)."""
        with self._wake:
            self._arriving += 1
        done = False

        def arrived() -> None:
            nonlocal done
            if not done:
                done = True
                with self._wake:
                    self._arriving -= 1
                    self._wake.notify()

        return arrived

    def cancel(self, seq: Request) -> None:
        """Stop a request at the next step and free its row (a no-op for a finished one)."""
        seq.cancelled = True
        with self._wake:
            self._wake.notify()

    def call(self, fn: Callable[[], object]) -> Future:
        """Run fn on the engine's thread between steps (for anything that changes the model); its result."""
        future: Future = Future()
        with self._wake:
            self.calls.append((fn, future))
            self._wake.notify()
        if not self._serving:  # nothing runs the loop (tests, benchmarks): run it here
            self._run_calls()
        return future

    def start(self) -> None:
        """Run the engine on a background thread (see `run` for why a server should prefer its main thread)."""
        self._stop = False
        self._serving = True
        self._thread = threading.Thread(target=self.run, name="lorakit-engine", daemon=True)
        self._thread.start()

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Serve on the calling thread until `stop` is called or `until()` (checked twice a second) is true.

        `lorakit serve` runs this on the main thread, the one that loaded the model, with HTTP on another: once
        the main thread has run parallel torch work, OpenMP (libgomp) counts its idle worker threads too and,
        seeing more threads than cores, stops spin-waiting, so every matrix product started from a second thread
        pays a wake-up and decode steps run markedly slower there.
        """
        self._stop = False
        self._serving = True
        try:
            self._loop(until)
        finally:
            self._serving = False

    def drain(self, timeout: float) -> bool:
        """Stop taking requests (submit raises ShuttingDown), let those waiting and running finish, and after
        `timeout` seconds end the rest with an error (status 503); True when all finished in time. Callable from
        any thread; steps the engine itself where nothing runs its loop."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        deadline = time.monotonic() + timeout
        while self._busy() and time.monotonic() < deadline:
            if self._serving:
                with self._wake:
                    self._wake.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            else:
                self.step()
        if not self._busy():
            return True
        error = f"the server is shutting down; the request did not finish within --drain-timeout={timeout:g}s"
        self.call(lambda: self._fail_all(error, 503)).result()
        return False

    def stop(self) -> None:
        """Stop the thread; requests still waiting or running end with an error."""
        with self._wake:
            self._closed = True
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._fail_all("the server is shutting down", 503)

    def _loop(self, until: Callable[[], bool] | None) -> None:
        while True:
            with self._wake:
                while not self._stop and not (self.waiting or self.prefilling or self.running or self.calls):
                    if until is not None and until():
                        return
                    self._wake.wait(0.5 if until is not None else None)
                if not self.running and not self.prefilling and self.waiting and self.arrival_gap > 0:
                    self._gather()
                if self._stop:
                    return
            try:
                self.step()
            except Exception as e:  # a failure no request is known to cause: fail those in flight, keep serving
                self._fail_all(f"the engine failed: {type(e).__name__}: {e}", 500)
            if not self._busy():
                with self._wake:
                    self._wake.notify_all()  # a drain waiting for the last request

    def _gather(self) -> None:
        """Hold an idle engine's first admission while requests are on their way or arrived within arrival_gap
        (see __init__); called with self._wake held (submit and arrived notify it)."""
        deadline = time.monotonic() + self.arrival_wait
        seen = len(self.waiting)
        while not self._stop and not self.calls:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(min(self.arrival_gap, left))
            if len(self.waiting) == seen and not self._arriving:
                return
            seen = len(self.waiting)
