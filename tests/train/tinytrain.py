"""Fixtures for tests/train: a tiny random Llama with a word-level tokenizer, saved as a model directory, and
small prompt/completion data sets. Nothing is downloaded."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lorakit.data import TextPair

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "->", "name", "food", "area", "the", "fox", "eats", "near", "a", "pub",
         "river", "cheap", "is", "in", "city", "centre", "serves", "italian", "french", "good", "bad", "it"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return LlamaForCausalLM(config)


def tiny_pairs(n: int, seed: int = 0) -> list[TextPair]:
    """Prompt/completion pairs whose completion repeats words of the prompt: learnable in a few steps."""
    rng = random.Random(seed)
    content = WORDS[8:]
    pairs = []
    for _ in range(n):
        words = [rng.choice(content) for _ in range(rng.randint(2, 5))]
        prompt = " ".join(words) + " ->"
        pairs.append(TextPair(prompt=prompt, completion=" ".join(reversed(words)), group=prompt))
    return pairs


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A saved tiny Llama + tokenizer that lorakit.models.load reads like any local model directory."""
    directory = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture
def jsonl_data(tmp_path: Path) -> tuple[Path, Path]:
    """(train.jsonl, dev.jsonl) of tiny_pairs."""
    paths = []
    for name, n, seed in (("train.jsonl", 64, 0), ("dev.jsonl", 8, 1)):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"prompt": p.prompt, "completion": p.completion}) + "\n"
                                for p in tiny_pairs(n, seed)))
        paths.append(path)
    return paths[0], paths[1]
