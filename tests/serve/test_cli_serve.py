"""`lorakit serve` wiring: options from the schema, safe defaults, startup adapters, --merge (one adapter at
base-model latency, nothing else)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest
import torch
from commands import parse as parse_command
from commands import run_cli
from serve_support import free_port, make_adapters, running_server, tiny_model, tiny_tokenizer

from lorakit import ConfigError
from lorakit.cli import build_parser
from lorakit.cli.options import fields
from lorakit.cli.serve import ServeOptions, build_service, parse_adapters, serve_options
from lorakit.serve.app import MAX_BODY, create_app, serve


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tiny_model().save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def parse(*argv: str) -> ServeOptions:
    return serve_options(parse_command("serve", list(argv)))


def test_every_serve_option_comes_from_the_schema_with_its_doc_as_help(capsys):
    with pytest.raises(SystemExit):
        build_parser("serve").parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, prop in fields(ServeOptions).items():
        assert f"--{name.replace('_', '-')}" in text, name
        assert " ".join(prop["description"].split())[:40] in text, name
    assert parse().max_body * 2**20 == MAX_BODY  # the command's default is the library's
    o = parse("--adapter", "a=x", "--adapter", "b=y", "--max-body", "0.5", "--drain-timeout", "2")
    assert o.adapter == ["a=x", "b=y"] and o.max_body == 0.5 and o.drain_timeout == 2


def test_an_empty_api_key_refuses_to_start_from_the_flag_or_the_environment(monkeypatch):
    with pytest.raises(ConfigError, match="empty API key"):
        run_cli("serve", ["--api-key", ""])
    monkeypatch.setenv("LORAKIT_API_KEY", " ")
    with pytest.raises(ConfigError, match="empty API key"):
        run_cli("serve", [])
    monkeypatch.setenv("LORAKIT_API_KEY", "0123")
    assert parse().api_key == "0123" and parse("--api-key", "yes").api_key == "yes"


def test_listening_beyond_loopback_needs_a_key_or_an_explicit_allow_unauthenticated(monkeypatch):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        with pytest.raises(ConfigError, match="--allow-unauthenticated"):
            parse("--host", host)
        assert parse("--host", host, "--allow-unauthenticated").host == host
        assert parse("--host", host, "--api-key", "k").api_key == "k"
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert parse("--host", host).api_key is None


def test_adapter_memory_has_a_default_budget_that_null_lifts_and_prefill_chunk_reaches_the_engine(model_dir):
    assert parse().adapter_memory == 1024
    assert build_service(parse("--model", str(model_dir))).pool.budget_bytes == 1024 * 2**20
    assert build_service(parse("--model", str(model_dir), "--prefill-chunk", "32")).engine.prefill_chunk == 32
    assert build_service(parse("--model", str(model_dir), "--adapter-memory", "null")).pool.budget_bytes is None


def test_malformed_adapter_options_are_all_reported_at_once():
    with pytest.raises(ConfigError) as e:
        parse_adapters(["sql", "=x", "a=1", "a=2"])
    assert "'sql' must look like NAME=PATH" in str(e.value) and "'=x'" in str(e.value) and "given twice" in str(e.value)
    assert parse_adapters(["sql=./a=b"])["sql"].name == "a=b"


def test_merge_needs_exactly_one_adapter_and_no_runtime_loading(model_dir, tmp_path):
    paths = make_adapters(tmp_path)
    with pytest.raises(ConfigError, match="exactly one adapter"):
        build_service(parse("--model", str(model_dir), "--merge", "--adapter", f"sql={paths['sql']}",
                            "--adapter", f"e2e={paths['e2e']}"))
    with pytest.raises(ConfigError, match="drop --adapter-root"):
        build_service(parse("--model", str(model_dir), "--merge", "--adapter", f"sql={paths['sql']}",
                            "--adapter-root", str(tmp_path)))


def test_a_merged_server_serves_only_its_adapter_with_the_unmerged_output(model_dir, tmp_path):
    paths = make_adapters(tmp_path)
    # fp32: merging rounds W + s·B·A once, which leaves greedy output unchanged; in bf16 it can change it.
    plain = build_service(parse("--model", str(model_dir), "--adapter", f"sql={paths['sql']}", "--device", "cpu",
                                "--dtype", "float32"))
    merged = build_service(parse("--model", str(model_dir), "--adapter", f"sql={paths['sql']}", "--merge",
                                 "--served-model-name", "tiny", "--dtype", "float32"))
    outputs = []
    for service in (plain, merged):
        with running_server(create_app(service)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            outputs.append(client.completions.create(model="sql", prompt="merge", max_tokens=10, temperature=0,
                                                     extra_body={"ignore_eos": True}).choices[0].text)
            if service is merged:
                assert [m.id for m in client.models.list().data] == ["sql"]
                with pytest.raises(openai.NotFoundError, match="merged into the weights"):
                    client.completions.create(model="tiny", prompt="base?", max_tokens=2)
                r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "e2e", "lora_path": "e2e"})
                assert r.status_code == 400 and "--merge" in r.text
    assert outputs[0] == outputs[1]


def test_auto_dtype_serves_a_llama_with_the_lean_bf16_forward_and_float32_keeps_transformers(model_dir):
    auto = build_service(parse("--model", str(model_dir), "--device", "cpu"))
    assert auto.engine.backend.name == "lean bf16" and next(auto.engine.model.parameters()).dtype == torch.bfloat16
    fp32 = build_service(parse("--model", str(model_dir), "--dtype", "float32", "--device", "cpu"))
    assert fp32.engine.backend.name == "transformers"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_a_gpu_serves_float32_with_the_transformers_forward(model_dir):
    gpu = build_service(parse("--model", str(model_dir)))  # auto device: the GPU
    assert gpu.engine.device.type == "cuda" and gpu.engine.backend.name == "transformers"
    assert next(gpu.engine.model.parameters()).dtype == torch.float32


def test_serve_runs_the_engine_on_the_calling_thread_with_http_beside_it(model_dir, tmp_path):
    paths = make_adapters(tmp_path)
    service = build_service(parse("--model", str(model_dir), "--adapter", f"sql={paths['sql']}"))
    stop, engine_threads = threading.Event(), []
    real_step = service.engine.step

    def step():
        engine_threads.append(threading.current_thread().name)
        real_step()

    service.engine.step = step
    port = free_port()
    caller = threading.Thread(target=serve, args=(service, "127.0.0.1", port), name="caller",
                              kwargs=dict(log_level="warning", until=stop.is_set))
    caller.start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=3)
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        out = client.completions.create(model="sql", prompt="hi", max_tokens=4, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 4
    finally:
        stop.set()
        caller.join(20)
    assert not caller.is_alive() and set(engine_threads) == {"caller"}


def test_a_port_already_in_use_is_an_error_not_a_silent_exit(model_dir):
    service = build_service(parse("--model", str(model_dir)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="could not listen"):
            serve(service, "127.0.0.1", taken.getsockname()[1], log_level="critical")
