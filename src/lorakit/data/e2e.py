"""E2E NLG Challenge readers (Novikova et al., 2017): restaurant meaning representations -> texts.

Two layouts are read:
- the official release, `trainset.csv`/`devset.csv` with columns `mr,ref` (a few refs hold quoted newlines)
  and `testset.csv` with the single column `MR` (inputs only, so completions are "");
- the LoRA repository's `e2e` folder, `train.txt`/`valid.txt`/`test.txt` with lines `MR||reference`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from lorakit.data.errors import DataError
from lorakit.data.files import lines, read_text, resolve
from lorakit.data.records import TextPair

E2ESplit = Literal["train", "dev", "test"]

E2E_FILES: dict[str, tuple[str, ...]] = {
    "train": ("trainset.csv", "train.txt"),
    "dev": ("devset.csv", "valid.txt"),
    "test": ("testset.csv", "test.txt"),
}
"""File names tried for each split inside a directory: the official CSV first, then the LoRA repo's text."""

E2E_PROMPT_TEMPLATE = "{mr} ->"
"""How an MR becomes model input. The arrow marks where the MR ends, so generation starts right after it;
unlike the LoRA repo's encoder, which separates MR and text with the end-of-text token, a printable separator
works with any tokenizer and cannot be confused with the end of the completion. `tokenize_pairs` puts one
space between the arrow and the text, so strip generated text before scoring it."""

LORA_SEPARATOR = "||"


def e2e_prompt(mr: str) -> str:
    """The model input for one meaning representation: `E2E_PROMPT_TEMPLATE` filled with `mr`."""
    return E2E_PROMPT_TEMPLATE.format(mr=mr)


def read_e2e(path: str | Path, split: E2ESplit | None = None) -> list[TextPair]:
    """Read E2E pairs from a file, or from a directory plus `split` ("train", "dev" or "test").

    Each pair is (prompt = e2e_prompt(mr), completion = reference, group = mr); the test CSV has no
    references, so its completions are "". Rows keep the file's order.
    """
    file = resolve(path, split, E2E_FILES, "E2E")
    text = read_text(file, "E2E")
    if file.suffix.lower() == ".csv":
        return _read_csv(file, text)
    return _read_lora_lines(file, text)


def group_references(pairs: Iterable[TextPair]) -> list[tuple[str, list[str]]]:
    """Unique groups in first-seen order, each with all its non-empty completions (its references).

    E2E's train CSV does not keep an MR's references on consecutive rows, so this groups by key, not by run.
    Empty completions (unlabeled test inputs) are not references: such a group has an empty list.
    """
    refs: dict[str, list[str]] = {}
    for pair in pairs:
        found = refs.setdefault(pair.group, [])
        if pair.completion:
            found.append(pair.completion)
    return list(refs.items())


def _read_csv(file: Path, text: str) -> list[TextPair]:
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[int, list[str]]] = []  # (line the row starts on, fields); quoted newlines span lines
    start = 1
    try:
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as e:  # e.g. a NUL byte, or an unclosed quote that swallowed the rest of the file
        raise DataError(f"{file}, line {reader.line_num}: not valid CSV ({e}); check the quoting there.") from e
    header = [name.strip().lower() for name in rows[0][1]]
    if "mr" not in header or not set(header) <= {"mr", "ref"}:
        raise DataError(f"{file}, line 1: E2E CSV columns are {header}; expected 'mr,ref' (train/dev) or "
                        "'MR' (test). Is this the official E2E release?")
    mr_col = header.index("mr")
    ref_col = header.index("ref") if "ref" in header else None
    pairs: list[TextPair] = []
    for line, row in rows[1:]:
        if not row:  # csv yields [] for a blank line, e.g. a trailing one
            continue
        if len(row) != len(header):
            raise DataError(f"{file}, line {line}: expected {len(header)} fields ({','.join(header)}), found "
                            f"{len(row)}; quote fields that contain commas.")
        mr, ref = row[mr_col].strip(), "" if ref_col is None else row[ref_col]
        if not mr or (ref_col is not None and not ref.strip()):
            missing = "mr" if not mr else "ref"
            raise DataError(f"{file}, line {line}: the {missing} field is empty; fill it or delete the row.")
        pairs.append(TextPair(prompt=e2e_prompt(mr), completion=ref, group=mr))
    if not pairs:
        raise DataError(f"{file} has a header but no rows; it should hold E2E records.")
    return pairs


def _read_lora_lines(file: Path, text: str) -> list[TextPair]:
    pairs: list[TextPair] = []
    for number, raw in enumerate(lines(text), start=1):
        if not raw.strip():
            continue
        fields = raw.split(LORA_SEPARATOR)
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise DataError(f"{file}, line {number}: expected 'MR{LORA_SEPARATOR}reference' with both parts "
                            f"non-empty, found {raw[:80]!r}. Each line holds one MR and one reference.")
        # The LoRA repo's files end every reference with a space; strip it so references compare cleanly.
        mr, ref = fields[0].strip(), fields[1].strip()
        pairs.append(TextPair(prompt=e2e_prompt(mr), completion=ref, group=mr))
    return pairs
