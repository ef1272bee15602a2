"""A tiny random Llama, a byte-level tokenizer with a chat template, adapters on disk, and a live server.

Not a conftest.py: tests elsewhere import `conftest` by name, and a second conftest module would shadow theirs.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import lorakit
from lorakit.core.state import wrappers
from lorakit.serve.app import create_app
from lorakit.serve.engine import Engine
from lorakit.serve.pool import AdapterPool
from lorakit.serve.service import Service

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONTEXT = 96


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: every string encodes, one token per byte, after 5 special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(SPECIALS + alphabet)}
    backend = Tokenizer(models.BPE(vocab, [], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                  additional_special_tokens=SPECIALS[2:4])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(seed: int = 0, layers: int = 2, vocab: int = 264) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                      pad_token_id=0, bos_token_id=1, eos_token_id=4)
    return LlamaForCausalLM(cfg).eval()


def save_adapter(directory: Path, config: lorakit.LoraConfig, seed: int, model_seed: int = 0, **kw) -> Path:
    """Save a LoRA adapter with random non-zero factors (zero B would equal the base model) for tiny_model."""
    model = tiny_model(model_seed, **kw)
    lorakit.inject(model, config, "x")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in wrappers(model):
            if "x" not in getattr(m, "lora_A", {}):  # a modules_to_save copy keeps its trained-as-is weights
                continue
            for p in (m.lora_A["x"], m.lora_B["x"]):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    lorakit.save_adapter(model, directory, "x")
    return directory


def make_adapters(root: Path) -> dict[str, Path]:
    """Three adapters of different ranks and targets under `root`."""
    specs = {
        "sql": lorakit.LoraConfig(rank=4),
        "e2e": lorakit.LoraConfig(rank=8, targets="all-linear"),
        "chat": lorakit.LoraConfig(rank=2, targets=("o_proj", "down_proj")),
    }
    return {name: save_adapter(root / name, cfg, seed=i + 1) for i, (name, cfg) in enumerate(specs.items())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app) -> Iterator[str]:
    """Serve a FastAPI app with uvicorn on a free loopback port in a thread; yields its base URL, always stops it."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start within 20 s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@dataclass
class Served:
    """A live test server: its URL, engine, adapter root and the adapters it started with."""

    url: str
    engine: Engine
    root: Path
    adapters: dict[str, Path]


@contextmanager
def tiny_server(root: Path, api_key: str | None = None, base_name: str = "tiny",
                dtype: torch.dtype = torch.float32) -> Iterator[Served]:
    """A server for tiny_model with the make_adapters adapters (loadable at runtime from `root`); bf16 serves
    with the lean forward."""
    adapters = make_adapters(root)
    model = tiny_model().to(dtype)
    pool = AdapterPool(model, root)
    for name in ("sql", "e2e"):
        pool.add(name, adapters[name], trusted=True)
    engine = Engine(model, tiny_tokenizer(), pool)
    with running_server(create_app(Service(engine, base_name), api_key)) as url:
        yield Served(url, engine, root, adapters)
