"""Fixtures for tests/models: a tiny random Llama and word-level tokenizer, saved so load() runs offline."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = ["<unk>", "<s>", "</s>", "the", "fox", "eats", "near", "a", "pub", "river"]


def _save_tiny_llama(directory: Path, pad_token: str | None = None) -> LlamaForCausalLM:
    """Save a 2-layer, d=16 Llama and its tokenizer (no pad token unless given) to `directory`."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token=pad_token
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


@pytest.fixture
def save_tiny_llama() -> Callable[..., LlamaForCausalLM]:
    """`save_tiny_llama(directory, pad_token=None)` -> the model it saved there."""
    return _save_tiny_llama
