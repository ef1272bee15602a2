"""Errors lorakit raises. Each message names the problem and what to do about it."""


class LoraError(Exception):
    """Base class of every error lorakit raises on purpose."""


class ConfigError(LoraError, ValueError):
    """A configuration value is invalid; the message lists every problem at once."""


class TargetError(LoraError, ValueError):
    """Target names matched nothing, or matched a module type lorakit cannot adapt."""


class AdapterError(LoraError, ValueError):
    """An adapter name is unknown, already exists, or cannot be used in the requested way."""


class AdapterFileError(LoraError, ValueError):
    """An adapter directory is missing, malformed, truncated, or made for a different base model."""


class MergeError(LoraError, RuntimeError):
    """Merging would produce non-finite weights, or the model is in a state that forbids it."""


class Interrupted(LoraError):
    """A long job stopped on a signal after saving what it had done; rerunning it resumes."""

    def __init__(self, message: str, signal: int) -> None:
        super().__init__(message)
        self.signal = signal
