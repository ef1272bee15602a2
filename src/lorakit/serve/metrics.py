"""Server metrics for Prometheus, kept by prometheus_client in a registry of the server's own.

Updated from the engine's thread and the HTTP threads; prometheus_client's metrics are thread-safe, and the few
values kept here (finished requests by model, the adapter pool's counts) share one lock.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Counters, gauges and histograms of one server."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._finished: dict[tuple[str | None, str], int] = defaultdict(int)  # (adapter or None, reason) -> count
        self._pool = {"loads": 0, "evictions": 0}
        self._base = "base"
        r = self.registry
        self.http_errors = Counter("lorakit_http_errors", "Requests refused with an HTTP error, by status.",
                                   ["status"], registry=r)
        self.prompt_tokens = Counter("lorakit_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generated_tokens = Counter("lorakit_generated_tokens", "Tokens generated.", registry=r)
        self.waiting = Gauge("lorakit_queue_length", "Requests waiting to join the batch.", registry=r)
        self.running = Gauge("lorakit_running_requests", "Requests in the running batch.", registry=r)
        self.adapters = Gauge("lorakit_resident_adapters", "Adapters loaded on the model.", registry=r)
        self.batch = Histogram("lorakit_batch_size", "Rows per decode step.", buckets=BATCH_BUCKETS, registry=r)
        self.first_token = Histogram("lorakit_time_to_first_token_seconds", "Submit to first token.",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("lorakit_request_latency_seconds", "Submit to last token.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        r.register(_Kept(self))

    def observe_finish(self, model: str | None, reason: str, prompt: int, generated: int, seconds: float) -> None:
        """A finished request: `model` is its adapter, None for the base model."""
        with self._lock:
            self._finished[(model, reason)] += 1
        self.prompt_tokens.inc(prompt)
        self.generated_tokens.inc(generated)
        self.latency.observe(seconds)

    def observe_first_token(self, seconds: float) -> None:
        self.first_token.observe(seconds)

    def observe_batch(self, rows: int) -> None:
        self.batch.observe(rows)

    def observe_error(self, status: int) -> None:
        self.http_errors.labels(status=str(status)).inc()

    def set_gauges(self, waiting: int, running: int, adapters: int, loads: int, evictions: int) -> None:
        """The engine's queue and batch sizes and the adapter pool's state, after each step."""
        self.waiting.set(waiting)
        self.running.set(running)
        self.adapters.set(adapters)
        with self._lock:
            self._pool = {"loads": loads, "evictions": evictions}

    def render(self, base_name: str) -> bytes:
        """The Prometheus text exposition; the base model's requests are labelled `base_name`."""
        with self._lock:
            self._base = base_name
        return generate_latest(self.registry)


class _Kept(Collector):
    """The values Metrics keeps itself: finished requests by model (the base model's label is known only when
    rendering) and the adapter pool's load and eviction counts (the pool counts them; these report its numbers)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        with m._lock:
            finished = dict(m._finished)
            pool = dict(m._pool)
            base = m._base
        requests = CounterMetricFamily("lorakit_requests", "Finished requests by model (adapter or base) and "
                                       "finish reason.", labels=["model", "finish_reason"])
        for (model, reason), n in sorted(finished.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            requests.add_metric([model or base, reason], n)
        yield requests
        yield CounterMetricFamily("lorakit_adapter_loads", "Adapter loads from disk.", value=pool["loads"])
        yield CounterMetricFamily("lorakit_adapter_evictions", "Idle adapters evicted for the memory budget.",
                                  value=pool["evictions"])
