"""lorakit's cache directory, and writing a directory into it all at once or not at all."""

from lorakit.core.atomic import write_atomically
from lorakit.core.paths import cache_root

__all__ = ["cache_root", "write_atomically"]
