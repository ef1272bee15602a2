"""Where lorakit keeps what it builds once per machine (converted models, the compiled C kernels)."""

import os
from pathlib import Path


def cache_root() -> Path:
    """`$LORAKIT_CACHE`, else `$XDG_CACHE_HOME/lorakit`, else `~/.cache/lorakit`."""
    if os.environ.get("LORAKIT_CACHE"):
        return Path(os.environ["LORAKIT_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "lorakit"
    return Path.home() / ".cache" / "lorakit"
