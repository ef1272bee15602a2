"""tests/train fixtures live in tinytrain.py (a plain module, so test files can import its helpers)."""

from tinytrain import *  # noqa: F403 (pytest registers the fixtures it finds here)
