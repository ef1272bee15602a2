"""DecodeConfig: how texts are generated (the defaults are the LoRA paper's E2E decoding, Hu et al., 2021,
Appendix D.3, Table 11: beam 10, length penalty 0.9, no repeated 4-grams, at most 64 new tokens)."""

from __future__ import annotations

from pydantic import Field

from lorakit.core.schema import Schema


class DecodeConfig(Schema):
    """How texts are generated."""

    beams: int = Field(10, ge=1)
    """Beam width (1 = greedy)."""
    length_penalty: float = 0.9
    """Beam scores are divided by length**length_penalty; below 1 favours shorter texts."""
    no_repeat_ngram_size: int = Field(4, ge=0)
    """Never generate an n-gram of this size twice (0 disables)."""
    max_new_tokens: int = Field(64, ge=1)
    """Stop after this many generated tokens."""
    batch_size: int = Field(8, ge=1)
    """Prompts decoded together (each expands to `beams` rows)."""
    max_prompt_length: int = Field(512, ge=1)
    """Prompts longer than this lose tokens from the left, as in training."""
