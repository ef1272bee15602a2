"""The HTTP routes (FastAPI): OpenAI-compatible endpoints with vLLM's conventions, admin, health, metrics, a page.

Routes only: every decision about models, prompts and limits is the Service's.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse

from lorakit.core.errors import ConfigError
from lorakit.serve.engine import ARRIVAL
from lorakit.serve.protocol import LoadLoraRequest, ServeError, UnloadLoraRequest, error_body, parse
from lorakit.serve.service import Service

log = logging.getLogger("lorakit.serve")
MAX_BODY = 4 * 2**20
"""Default request body limit in bytes: 64 full-context prompts of an 8k-context model fit as token ids, and the
largest body parses (holding the GIL) quickly enough not to hold up /health."""
STATIC = Path(__file__).parent / "static"
OPEN_PATHS = {"/health", "/", "/static/index.html"}
"""Reachable without the API key: the health check, and the page, which holds no data and asks for the key."""


def create_app(service: Service, api_key: str | None = None, start_engine: bool = True,
               max_body: int = MAX_BODY) -> FastAPI:
    """The server's ASGI app; with start_engine its lifespan starts and stops the engine on a thread.

    Request bodies larger than max_body bytes are refused (413) while they are read; parsing and tokenizing run
    on worker threads, so /health answers while a large request is being prepared."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if not start_engine:
            yield
            return
        service.engine.start()
        try:
            yield
        finally:
            service.engine.stop()

    app = FastAPI(title="lorakit serve", lifespan=lifespan)
    metrics = service.engine.metrics

    app.add_middleware(Arrivals, engine=service.engine)
    app.add_middleware(BodyLimit, limit=max_body, metrics=metrics)
    if api_key:
        app.add_middleware(ApiKeyCheck, api_key=api_key, metrics=metrics)

    @app.exception_handler(ServeError)
    async def serve_error(_: Request, e: ServeError) -> JSONResponse:
        metrics.observe_error(e.status)
        return JSONResponse(error_body(e.status, e.message, e.param), status_code=e.status)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        metrics.observe_error(500)
        message = f"the server failed on this request ({type(e).__name__}); the server log has the details"
        return JSONResponse(error_body(500, message), status_code=500)

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(service.base_name), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict:
        return service.models()

    @app.post("/v1/completions")
    async def completions(request: Request):
        plan = await asyncio.to_thread(service.prepare_completion, await request.body())
        return _respond(await service.respond(plan, request.is_disconnected))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        plan = await asyncio.to_thread(service.prepare_chat, await request.body())
        return _respond(await service.respond(plan, request.is_disconnected))

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request) -> PlainTextResponse:
        body = await asyncio.to_thread(parse, LoadLoraRequest, await request.body())
        await service.load_adapter(body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request) -> PlainTextResponse:
        body = await asyncio.to_thread(parse, UnloadLoraRequest, await request.body())
        await service.unload_adapter(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def _respond(result: dict | AsyncIterator[str]) -> dict | StreamingResponse:
    """A dict becomes JSON; an async iterator of SSE lines becomes an event stream."""
    if isinstance(result, dict):
        return result
    return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413, told from Content-Length before reading or
    counted while reading (a chunked upload), so a huge body is never held in memory."""

    def __init__(self, app, limit: int, metrics):
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self.metrics.observe_error(413)
            response = JSONResponse(error_body(413, self.message()), status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ServeError(413, self.message())
            return message

        return await self.app(scope, limited, send)

    def message(self) -> str:
        return (f"the request body is larger than this server's limit of {self.limit} bytes "
                f"({self.limit / 2**20:g} MiB); send fewer or shorter prompts, or restart the server with a larger "
                f"--max-body")


GENERATION_PATHS = {"/v1/completions", "/v1/chat/completions"}


class Arrivals:
    """ASGI middleware: tells the engine a generation request is on its way from the moment its headers are read
    until it is submitted (or fails), so that an idle engine prefills a burst of requests together instead of
    starting on the first while the HTTP thread is still reading the rest (Engine.arriving)."""

    def __init__(self, app, engine):
        self.app = app
        self.engine = engine

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        arrived = self.engine.arriving()
        token = ARRIVAL.set(arrived)
        try:
            return await self.app(scope, receive, send)
        finally:
            arrived()
            ARRIVAL.reset(token)


class ApiKeyCheck:
    """ASGI middleware: every path but OPEN_PATHS needs `Authorization: Bearer <key>` (OpenAI clients send it)."""

    def __init__(self, app, api_key: str, metrics):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        self.metrics.observe_error(401)
        response = JSONResponse(error_body(401, "missing or wrong API key: send 'Authorization: Bearer <key>'"),
                                status_code=401)
        await response(scope, receive, send)


def serve(service: Service, host: str, port: int, api_key: str | None = None, log_level: str = "info",
          until: Callable[[], bool] | None = None, max_body: int = MAX_BODY, drain_timeout: float = 30.0) -> int:
    """Serve HTTP (uvicorn) on a background thread and run the engine on this one until SIGTERM or SIGINT (when
    called from the main thread), the server stops, or `until()` is true. The engine belongs on the thread that
    loaded the model: see Engine.run.

    A signal drains: no new connections, requests in flight finish within drain_timeout seconds (then they end
    with an error), a second signal stops at once. Returns the exit status: 0, or 128 + the signal's number
    when requests had to be cut short; ConfigError when the server could not listen.
    """
    import uvicorn

    config = uvicorn.Config(create_app(service, api_key, start_engine=False, max_body=max_body), host=host,
                            port=port, log_level=log_level, timeout_graceful_shutdown=int(drain_timeout) + 5)
    server = uvicorn.Server(config)
    http = threading.Thread(target=_run_http, args=(server,), name="lorakit-http", daemon=True)
    drain = Drain(server, http, service.engine, drain_timeout)
    handled = (signal.SIGTERM, signal.SIGINT)
    before = {s: signal.signal(s, drain.on_signal) for s in handled} if _main_thread() else {}
    http.start()
    try:
        service.engine.run(until=lambda: drain.done.is_set() or not http.is_alive() or (until is not None and until()))
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        server.should_exit = True
        http.join(timeout=drain_timeout + 10)
        service.engine.stop()
    if not server.started:
        raise ConfigError(f"the HTTP server could not listen on {host}:{port} (uvicorn says why above); choose "
                          f"another --port or --host")
    return drain.status()


class Drain:
    """What SIGTERM and SIGINT do to a running server: stop accepting, let requests in flight finish (at most
    `timeout` seconds, Engine.drain), let HTTP send their last bytes, then end serve()."""

    def __init__(self, server, http: threading.Thread, engine, timeout: float):
        self.server = server
        self.http = http
        self.engine = engine
        self.timeout = timeout
        self.signum: int | None = None
        self.cut_short = False
        self.done = threading.Event()

    def on_signal(self, signum: int, _frame) -> None:
        if self.signum is not None:  # a second signal: stop now
            log.warning("lorakit serve: second signal; stopping without waiting for requests in flight")
            self.cut_short = True
            self.server.force_exit = True
            self.done.set()
            return
        self.signum = signum
        threading.Thread(target=self._drain, name="lorakit-drain", daemon=True).start()

    def _drain(self) -> None:
        name = signal.Signals(self.signum).name
        log.warning("lorakit serve: %s: finishing requests in flight (up to %g s; a second signal stops now)",
                    name, self.timeout)
        self.server.should_exit = True  # uvicorn closes the listener, finishes open responses, closes idle ones
        finished = self.engine.drain(self.timeout)
        self.cut_short = self.cut_short or not finished
        self.http.join(timeout=10)  # the responses that carry the last events (or the 503s) go out
        log.warning("lorakit serve: %s", "drained" if finished else "drain timed out; requests still running "
                    f"after --drain-timeout={self.timeout:g}s ended with an error")
        self.done.set()

    def status(self) -> int:
        return 128 + self.signum if self.signum is not None and self.cut_short else 0


def _run_http(server) -> None:
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind, having logged why; serve() reports it
        pass


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
