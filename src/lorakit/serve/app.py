"""The HTTP routes (FastAPI): OpenAI-compatible endpoints with vLLM's conventions, admin, health, metrics, a page.

Routes only: every decision about models, prompts and limits is the Service's.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse

from lorakit.serve.engine import ARRIVAL
from lorakit.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    LoadLoraRequest,
    ServeError,
    UnloadLoraRequest,
    error_body,
)
from lorakit.serve.service import Service

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = {"/health", "/", "/static/index.html"}
"""Reachable without the API key: the health check, and the page, which holds no data and asks for the key."""


def create_app(service: Service, api_key: str | None = None, start_engine: bool = True) -> FastAPI:
    """The server's ASGI app; with start_engine its lifespan starts and stops the engine on a thread."""

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
    if api_key:
        app.add_middleware(ApiKeyCheck, api_key=api_key, metrics=metrics)

    @app.exception_handler(ServeError)
    async def serve_error(_: Request, e: ServeError) -> JSONResponse:
        metrics.observe_error(e.status)
        return JSONResponse(error_body(e.status, e.message, e.param), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        problems = [_problem(err) for err in e.errors()]
        first = e.errors()[0]["loc"] if e.errors() else ()
        param = ".".join(str(x) for x in first if x != "body") or None
        metrics.observe_error(400)
        return JSONResponse(error_body(400, "invalid request: " + "; ".join(problems), param), status_code=400)

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
    async def completions(body: CompletionRequest, request: Request):
        return await _respond(service.completion(body, request.is_disconnected))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        return await _respond(service.chat(body, request.is_disconnected))

    @app.post("/v1/load_lora_adapter")
    async def load_lora(body: LoadLoraRequest) -> PlainTextResponse:
        await service.load_adapter(body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(body: UnloadLoraRequest) -> PlainTextResponse:
        await service.unload_adapter(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def _problem(err: dict) -> str:
    """One validation error as `field: what is wrong`, with the body-level cases said plainly."""
    field = ".".join(str(x) for x in err["loc"] if x != "body")
    if err["type"] == "json_invalid":
        return f"the request body is not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})"
    if not field:
        return "the request body must be a JSON object (send it with Content-Type: application/json)"
    return f"{field}: {err['msg']}"


async def _respond(result):
    """A dict becomes JSON; an async iterator of SSE lines becomes an event stream."""
    if isinstance(result, dict):
        return result
    if hasattr(result, "__aiter__"):
        return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return await result


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
          until: Callable[[], bool] | None = None) -> None:
    """Serve HTTP (uvicorn) on a background thread and run the engine on this one, until Ctrl-C, the server
    stops or `until()` is true. The engine belongs on the thread that loaded the model: see Engine.run."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(service, api_key, start_engine=False), host=host, port=port,
                                           log_level=log_level))
    http = threading.Thread(target=server.run, name="lorakit-http", daemon=True)
    http.start()
    try:
        service.engine.run(until=lambda: not http.is_alive() or (until is not None and until()))
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        http.join(timeout=30)
        service.engine.stop()
