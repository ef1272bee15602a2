"""Server metrics in the Prometheus text format, written by hand (no prometheus_client dependency).

Updated from the engine's thread and the HTTP threads, so every update and the rendering hold one lock.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    """Cumulative bucket counts, sum and count, as Prometheus histograms are exposed."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{_number(b)}"}} {c}' for b, c in zip(self.buckets, self.counts, strict=True)]
        total = [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum}", f"{name}_count {self.count}"]
        return out + total


class Metrics:
    """Counters, gauges and histograms of one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (model, finish reason) -> count
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.http_errors: dict[int, int] = defaultdict(int)
        self.gauges = {"waiting": 0, "running": 0, "adapters": 0, "loads": 0, "evictions": 0}
        self.first_token = Histogram(LATENCY_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)

    def observe_finish(self, model: str | None, reason: str, prompt: int, generated: int, seconds: float) -> None:
        with self._lock:
            self.requests[(model or "base", reason)] += 1
            self.prompt_tokens += prompt
            self.generated_tokens += generated
            self.latency.observe(seconds)

    def observe_first_token(self, seconds: float) -> None:
        with self._lock:
            self.first_token.observe(seconds)

    def observe_batch(self, rows: int) -> None:
        with self._lock:
            self.batch.observe(rows)

    def observe_error(self, status: int) -> None:
        with self._lock:
            self.http_errors[status] += 1

    def set_gauges(self, **values: int) -> None:
        with self._lock:
            self.gauges.update(values)

    def render(self, base_name: str) -> str:
        """The Prometheus text exposition of every metric; the base model's requests are labelled `base_name`."""
        with self._lock:
            out = ["# HELP lorakit_requests_total Finished requests by model (adapter or base) and finish reason.",
                   "# TYPE lorakit_requests_total counter"]
            for (model, reason), n in sorted(self.requests.items()):
                name = base_name if model == "base" else model
                out.append(f'lorakit_requests_total{{model="{_label(name)}",finish_reason="{reason}"}} {n}')
            out += ["# HELP lorakit_http_errors_total Requests refused with an HTTP error, by status.",
                    "# TYPE lorakit_http_errors_total counter"]
            out += [f'lorakit_http_errors_total{{status="{s}"}} {n}' for s, n in sorted(self.http_errors.items())]
            out += _counter("lorakit_prompt_tokens_total", "Prompt tokens of finished requests.", self.prompt_tokens)
            out += _counter("lorakit_generated_tokens_total", "Tokens generated.", self.generated_tokens)
            out += _gauge("lorakit_queue_length", "Requests waiting to join the batch.", self.gauges["waiting"])
            out += _gauge("lorakit_running_requests", "Requests in the running batch.", self.gauges["running"])
            out += _gauge("lorakit_resident_adapters", "Adapters loaded on the model.", self.gauges["adapters"])
            out += _counter("lorakit_adapter_loads_total", "Adapter loads from disk.", self.gauges["loads"])
            out += _counter("lorakit_adapter_evictions_total", "Idle adapters evicted for the memory budget.",
                            self.gauges["evictions"])
            out += _histogram("lorakit_batch_size", "Rows per decode step.", self.batch)
            out += _histogram("lorakit_time_to_first_token_seconds", "Submit to first token.", self.first_token)
            out += _histogram("lorakit_request_latency_seconds", "Submit to last token.", self.latency)
        return "\n".join(out) + "\n"


def _counter(name: str, help_text: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]


def _gauge(name: str, help_text: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]


def _histogram(name: str, help_text: str, h: Histogram) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *h.lines(name)]


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and not math.isinf(x) else str(x)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
