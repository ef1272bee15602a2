"""The quickstart data set shipped with lorakit: fictional restaurants, meaning representation -> text."""

from importlib.resources import files
from pathlib import Path


def restaurants_path() -> Path:
    """The shipped `restaurants.jsonl` (360 lines of {"mr", "ref", "split"}; see `generate.py`)."""
    return Path(str(files("lorakit.quickstart") / "restaurants.jsonl"))
