"""The error `lorakit.models` raises when a model name or directory cannot be loaded."""

from lorakit.core.errors import LoraError


class ModelError(LoraError, ValueError):
    """A model name is unknown, its PyPI package is missing, or a directory is not a transformers model."""
