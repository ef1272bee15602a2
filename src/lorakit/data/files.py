"""Finding and opening data files, with errors that say which file was expected and why it failed."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lorakit.data.errors import DataError


def resolve(path: str | Path, split: str | None, layouts: Mapping[str, Sequence[str]], dataset: str) -> Path:
    """The file to read: `path` itself if it is a file, else the first `layouts[split]` name inside it.

    `layouts` maps a split to the file names it may have, in the order tried, e.g.
    {"dev": ("devset.csv", "valid.txt")}.
    """
    path = Path(path)
    if path.is_file():
        return path
    expected = ", ".join(name for names in layouts.values() for name in names)
    if not path.exists():
        raise DataError(f"{dataset} data not found: {path} does not exist. Give a file, or a directory that "
                        f"holds one of: {expected}.")
    if split is None:
        raise DataError(f"{path} is a directory; say which {dataset} split to read with split= "
                        f"(one of {', '.join(layouts)}), or pass the file itself.")
    if split not in layouts:
        raise DataError(f"unknown {dataset} split {split!r}; use one of {', '.join(layouts)}.")
    for name in layouts[split]:
        if (path / name).is_file():
            return path / name
    found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
    raise DataError(f"no {dataset} {split} file in {path}: expected {' or '.join(layouts[split])}, found "
                    f"{found}.")


def read_text(path: Path, dataset: str) -> str:
    """The file's text, decoded as UTF-8 with any byte-order mark removed; never empty.

    Line endings are kept as they are (no universal-newline translation), so a CSV parser sees quoted
    newlines intact; split lines with `lines()`.
    """
    if not path.is_file():
        raise DataError(f"{dataset} file not found: {path}. Check the path (it is read as is, not copied).")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({e.reason}); re-save it as UTF-8.") from e
    if not text.strip():
        raise DataError(f"{path} is empty; it should hold {dataset} records. Re-download or regenerate it.")
    return text


def lines(text: str) -> list[str]:
    """Lines split on "\n" only, without a trailing "\r"; `str.splitlines` would also split inside GLUE
    texts at rarer separators (form feed, U+2028)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def json_lines(file: Path, text: str) -> list[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON Lines file."""
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(lines(text), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{file}, line {number}: not valid JSON ({e.msg} at column {e.colno}); each line "
                            "must be one complete JSON object.") from e
    return out


def require_strings(file: Path, where: str, record: Any, required: tuple[str, ...],
                    optional: tuple[str, ...] = ()) -> dict[str, str]:
    """`record` as a dict of strings, after checking it has every required key and no unknown one."""
    if not isinstance(record, dict):
        raise DataError(f"{file}, {where}: expected a JSON object with keys {', '.join(required)}, found "
                        f"{type(record).__name__}.")
    missing = [k for k in required if k not in record]
    unknown = [k for k in record if k not in required + optional]
    if missing or unknown:
        raise DataError(f"{file}, {where}: keys are {sorted(record)}; expected {', '.join(required)}"
                        + (f" (optional: {', '.join(optional)})" if optional else "")
                        + (f"; missing {', '.join(missing)}" if missing else "")
                        + (f"; unknown {', '.join(unknown)}" if unknown else "") + ".")
    wrong = [k for k, v in record.items() if not isinstance(v, str)]
    if wrong:
        raise DataError(f"{file}, {where}: {', '.join(wrong)} must be strings; found "
                        f"{', '.join(type(record[k]).__name__ for k in wrong)}.")
    return record
