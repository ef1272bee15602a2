"""SIGINT and SIGTERM drain a real `lorakit serve` process: it stops accepting, lets the requests in flight finish
(streams and whole responses), and exits 0; requests still running after --drain-timeout end with an error event
and the exit status says so (128 + the signal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from edge_support import metric_samples
from serve_support import free_port, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.slow
LONG_CONTEXT = 4096


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny model with room for long generations (its weights do not depend on the context length)."""
    d = tmp_path_factory.mktemp("tiny-long")
    model = tiny_model()
    model.config.max_position_embeddings = LONG_CONTEXT
    model.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


class Server:
    """`lorakit serve` in a subprocess on a free port."""

    def __init__(self, model_dir: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        env.pop("LORAKIT_API_KEY", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lorakit", "serve", "--model", str(model_dir), "--port", str(self.port),
             "--dtype", "float32", "--device", "cpu", "--threads", "1", "--log-level", "warning", "--no-progress",
             *flags],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.1)

    def running(self) -> float:
        return metric_samples(httpx.get(self.url + "/metrics", timeout=5).text)[("lorakit_running_requests", ())]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def stream(url: str, max_tokens: int, out: list, first: threading.Event) -> None:
    """A streamed completion; appends every event's data to `out`, sets `first` once a token has arrived."""
    body = {"model": str(url), "prompt": "go", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url.rsplit("#", 1)[0] + "/v1/completions", json={**body, "model": "base"},
                      timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
                first.set()


def whole(url: str, max_tokens: int, out: list) -> None:
    body = {"model": "base", "prompt": "go", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    out.append(httpx.post(url + "/v1/completions", json=body, timeout=120))


def start(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def stream_and_whole(server, stream_tokens: int, whole_tokens: int) -> tuple[list[threading.Thread], list, list]:
    """A streamed and a whole completion running on the server (both admitted): their threads, the stream's events
    and the whole response (filled in as they arrive)."""
    events, first, answers = [], threading.Event(), []
    threads = [start(stream, server.url, stream_tokens, events, first), start(whole, server.url, whole_tokens, answers)]
    assert first.wait(30)
    deadline = time.monotonic() + 30
    while server.running() < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return threads, events, answers


def test_sigint_lets_requests_in_flight_finish_refuses_new_ones_and_exits_0(model_dir):
    server = Server(model_dir, "--served-model-name", "base")
    try:
        threads, events, answers = stream_and_whole(server, 200, 150)
        server.process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # the listener is closed while the two still run
            httpx.get(server.url + "/health", timeout=2)
        for t in threads:
            t.join(120)
        assert server.process.wait(60) == 0
        assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 200
        assert events[-3]["choices"][0]["finish_reason"] == "length"
        assert answers[0].status_code == 200 and answers[0].json()["usage"]["completion_tokens"] == 150
    finally:
        server.stop()


def test_requests_still_running_after_the_drain_timeout_end_with_an_error_and_exit_143(model_dir):
    server = Server(model_dir, "--served-model-name", "base", "--drain-timeout", "1")
    try:
        threads, events, answers = stream_and_whole(server, 4000, 4000)
        server.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert server.process.wait(60) == 128 + signal.SIGTERM
        assert events[-1] == "[DONE]" and "drain-timeout" in events[-2]["error"]["message"]
        assert answers[0].status_code == 503 and "drain-timeout" in answers[0].json()["error"]["message"]
    finally:
        server.stop()
