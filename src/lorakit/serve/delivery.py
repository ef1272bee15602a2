"""Getting the engine's events to the event loop: the requests of one HTTP request as one async stream, woken
once per burst of events, until they end or the client goes away."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress

from lorakit.serve.engine import Engine, Event, Request


class Run:
    """The engine requests of one HTTP request, and their events in arrival order."""

    def __init__(self, engine: Engine, queue: asyncio.Queue, requests: list[Request]):
        self.engine = engine
        self.queue = queue
        self.requests = requests

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        left = len(self.requests)
        while left:
            i, event = await self.queue.get()
            left -= event.finish_reason is not None
            yield i, event

    def cancel(self) -> None:
        """Stop every request still running (a no-op for finished ones)."""
        for r in self.requests:
            self.engine.cancel(r)


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


async def wait_for_disconnect(disconnected: Callable[[], Awaitable[bool]]) -> None:
    while not await disconnected():
        await asyncio.sleep(0.25)


async def until(events: AsyncIterator[tuple[int, Event]], watcher: asyncio.Task) -> AsyncIterator[tuple[int, Event]]:
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
