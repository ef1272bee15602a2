"""ModelConfig: which base model a run loads (train's and compare's `model:` section)."""

from __future__ import annotations

from lorakit.core.schema import Schema


class ModelConfig(Schema):
    """Which model to fine-tune."""

    name: str = "smollm2-135m"
    """A built-in model name (see `lorakit info`) or a local transformers directory."""
