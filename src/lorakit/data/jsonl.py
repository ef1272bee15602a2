"""The generic reader: JSON Lines of {"prompt": ..., "completion": ...}, for tasks with no own reader."""

from __future__ import annotations

from pathlib import Path

from lorakit.data.errors import DataError
from lorakit.data.files import json_lines, read_text, require_strings
from lorakit.data.records import TextPair


def read_jsonl(path: str | Path) -> list[TextPair]:
    """Read one pair per line from {"prompt", "completion"} objects, with an optional "group" key
    (records sharing a group are each other's references; it defaults to the prompt)."""
    file = Path(path)
    pairs = []
    for number, record in json_lines(file, read_text(file, "JSON Lines")):
        r = require_strings(file, f"line {number}", record, ("prompt", "completion"), ("group",))
        group = r.get("group", r["prompt"])
        pairs.append(TextPair(prompt=r["prompt"], completion=r["completion"], group=group))
    if not pairs:
        raise DataError(f"{file} holds no records; write one {{\"prompt\", \"completion\"}} object per line.")
    return pairs
