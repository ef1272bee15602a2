"""The error `lorakit.data` raises when a data file is missing, empty or malformed."""

from lorakit.core.errors import LoraError


class DataError(LoraError, ValueError):
    """A data file is missing, empty or malformed (the message names the file, the line and the fix), or the
    data cannot be made into examples as asked."""
