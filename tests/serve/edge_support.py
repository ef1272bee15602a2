"""Helpers for the HTTP-side tests: metric samples, raw SSE events, a server with its own limits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prometheus_client.parser import text_string_to_metric_families
from serve_support import Served, make_adapters, running_server, tiny_model, tiny_tokenizer

from lorakit.serve.app import create_app
from lorakit.serve.engine import Engine
from lorakit.serve.pool import AdapterPool
from lorakit.serve.service import Service


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value of a Prometheus exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sse_events(response: httpx.Response) -> list[dict | str]:
    """The data of each server-sent event of a streamed response: parsed JSON, or the closing "[DONE]"."""
    out: list[dict | str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@contextmanager
def limited_server(root, max_body: int, api_key: str | None = None) -> Iterator[Served]:
    """tiny_server's setup (fp32, adapters sql and e2e) with a request body limit of max_body bytes."""
    adapters = make_adapters(root)
    model = tiny_model()
    pool = AdapterPool(model, root)
    for name in ("sql", "e2e"):
        pool.add(name, adapters[name], trusted=True)
    engine = Engine(model, tiny_tokenizer(), pool)
    with running_server(create_app(Service(engine, "tiny"), api_key, max_body=max_body)) as url:
        yield Served(url, engine, root, adapters)
