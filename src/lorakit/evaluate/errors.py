"""The error `lorakit.evaluate` raises when metric inputs do not fit together or a scorer fails."""

from lorakit.core.errors import LoraError


class MetricError(LoraError, ValueError):
    """Predictions and references do not line up, a segment has no reference, or an external scorer failed."""
