"""Instruction-tuning readers: Alpaca JSON lists and self-instruct JSON Lines, as message/answer pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakit.data.errors import DataError
from lorakit.data.files import json_lines, read_text, require_strings
from lorakit.data.records import TextPair


def instruct_prompt(instruction: str, input_text: str) -> str:
    """The user message: the instruction, then a blank line and the input when there is one.

    Kept as plain text (no "### Instruction:" scaffolding) so chat templates can wrap it as the user turn.
    """
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


def read_instruct(path: str | Path) -> list[TextPair]:
    """Read instruction data: an Alpaca JSON list of {instruction, input, output}, or self-instruct JSON Lines
    of {id, instruction, instances: [{input, output}]} (one pair per instance).

    Each pair is (prompt = instruct_prompt(instruction, input), completion = output, group = prompt).
    The format is told apart by content: a file that starts with "[" is an Alpaca list.
    """
    file = Path(path)
    text = read_text(file, "instruction")
    pairs = _read_alpaca(file, text) if text.lstrip().startswith("[") else _read_self_instruct(file, text)
    if not pairs:
        raise DataError(f"{file} holds no examples; it should list instruction/output records.")
    return pairs


def _pair(instruction: str, input_text: str, output: str) -> TextPair:
    prompt = instruct_prompt(instruction, input_text)
    return TextPair(prompt=prompt, completion=output, group=prompt)


def _read_alpaca(file: Path, text: str) -> list[TextPair]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{file}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno}); an Alpaca "
                        "file is one JSON list of objects.") from e
    if not isinstance(records, list):
        raise DataError(f"{file}: expected a JSON list of {{instruction, input, output}} objects, found "
                        f"{type(records).__name__}.")
    pairs = []
    for number, record in enumerate(records, start=1):
        r = require_strings(file, f"record {number}", record, ("instruction", "output"), ("input",))
        pairs.append(_pair(r["instruction"], r.get("input", ""), r["output"]))
    return pairs


def _read_self_instruct(file: Path, text: str) -> list[TextPair]:
    pairs = []
    for number, record in json_lines(file, text):
        where = f"line {number}"
        instruction, instances = _task(file, where, record)
        for i, instance in enumerate(instances, start=1):
            r = require_strings(file, f"{where}, instance {i}", instance, ("input", "output"))
            pairs.append(_pair(instruction, r["input"], r["output"]))
    return pairs


def _task(file: Path, where: str, record: Any) -> tuple[str, list[Any]]:
    """A self-instruct line's instruction and instances, checked (other keys, like id, are ignored)."""
    expected = "a JSON object with a string 'instruction' and a non-empty 'instances' list of {input, output}"
    if not isinstance(record, dict):
        raise DataError(f"{file}, {where}: expected {expected}, found {type(record).__name__}.")
    instruction, instances = record.get("instruction"), record.get("instances")
    if not isinstance(instruction, str) or not isinstance(instances, list) or not instances:
        raise DataError(f"{file}, {where}: keys are {sorted(record)}; expected {expected}. (Alpaca data is "
                        "one JSON list instead.)")
    return instruction, instances
