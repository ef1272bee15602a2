"""Serving one base model with many LoRA adapters: adapter pool, continuous-batching engine, HTTP app.

The engine side needs only torch and transformers; the HTTP side (lorakit.serve.app.create_app,
lorakit.serve.service.Service) needs the `serve` extra (fastapi, uvicorn) and is imported from its modules.
"""

from lorakit.serve.engine import Engine, Event, Request
from lorakit.serve.metrics import Metrics
from lorakit.serve.pool import AdapterPool, PoolError
from lorakit.serve.sampling import SamplingParams

__all__ = ["AdapterPool", "Engine", "Event", "Metrics", "PoolError", "Request", "SamplingParams"]
