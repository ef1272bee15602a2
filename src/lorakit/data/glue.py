"""GLUE readers (Wang et al., 2019) for the four tasks the LoRA paper's RoBERTa/DeBERTa tables include
and that fit a quick run: SST-2, MRPC, RTE and CoLA, from the original GLUE TSV files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakit.data.errors import DataError
from lorakit.data.files import lines, read_text, resolve
from lorakit.data.records import LabeledText

GlueSplit = Literal["train", "dev"]


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task's TSV is laid out and scored."""

    columns: tuple[str, ...]
    """Column names in file order; the header line must equal them exactly (CoLA has no header)."""
    has_header: bool
    text: str
    """Column holding the (first) text."""
    text_pair: str | None
    """Column holding the second text of pair tasks, else None."""
    label: str
    """Column holding the label."""
    label_values: tuple[str, ...]
    """The label as written in the file, in class-index order: label_values[i] becomes label i."""
    label_names: tuple[str, ...]
    metric: Literal["accuracy", "matthews_corrcoef"]
    """The number the LoRA paper reports (Table 2): Matthews correlation for CoLA, accuracy otherwise."""

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_values)


GLUE_TASKS: dict[str, GlueTask] = {
    "sst2": GlueTask(
        columns=("sentence", "label"), has_header=True, text="sentence", text_pair=None, label="label",
        label_values=("0", "1"), label_names=("negative", "positive"), metric="accuracy",
    ),
    "mrpc": GlueTask(
        columns=("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), has_header=True,
        text="#1 String", text_pair="#2 String", label="Quality",
        label_values=("0", "1"), label_names=("not_equivalent", "equivalent"), metric="accuracy",
    ),
    "rte": GlueTask(
        columns=("index", "sentence1", "sentence2", "label"), has_header=True,
        text="sentence1", text_pair="sentence2", label="label",
        label_values=("entailment", "not_entailment"), label_names=("entailment", "not_entailment"),
        metric="accuracy",
    ),
    "cola": GlueTask(
        columns=("source", "label", "mark", "sentence"), has_header=False, text="sentence", text_pair=None,
        label="label", label_values=("0", "1"), label_names=("unacceptable", "acceptable"),
        metric="matthews_corrcoef",
    ),
}
"""The GLUE tasks lorakit reads, by lower-case name."""

GLUE_FILES: dict[str, tuple[str, ...]] = {"train": ("train.tsv",), "dev": ("dev.tsv",)}


def read_glue(task: str, path: str | Path, split: GlueSplit | None = None) -> list[LabeledText]:
    """Read one GLUE task's labeled examples from a TSV file, or from a directory plus `split`.

    The directory may be the task's own (holding train.tsv, dev.tsv) or the GLUE root holding `task/`.
    Fields are split on tabs with no quote handling: GLUE texts contain unbalanced quote characters.
    """
    spec = glue_task(task)
    if split == "test":
        raise DataError("GLUE test labels are not public, so there is nothing to score; read 'train' or "
                        "'dev' (the LoRA paper reports dev-set results).")
    root = Path(path)
    if root.is_dir() and (root / task.lower()).is_dir():
        root = root / task.lower()
    file = resolve(root, split, GLUE_FILES, f"GLUE {task}")
    rows = lines(read_text(file, f"GLUE {task}"))
    start = 0
    if spec.has_header:
        found = tuple(rows[0].split("\t"))
        if found != spec.columns:
            raise DataError(f"{file}, line 1: columns are {list(found)}; expected {list(spec.columns)} for "
                            f"{task}. Check the task name and split (GLUE test files have no label column).")
        start = 1
    records = [_parse(spec, file, number, line)
               for number, line in enumerate(rows[start:], start=start + 1) if line.strip()]
    if not records:
        raise DataError(f"{file} has a header but no rows; it should hold GLUE {task} examples.")
    return records


def glue_task(task: str) -> GlueTask:
    """The layout and metric of a GLUE task, by case-insensitive name."""
    spec = GLUE_TASKS.get(task.lower())
    if spec is None:
        raise DataError(f"unknown GLUE task {task!r}; lorakit reads {', '.join(GLUE_TASKS)}.")
    return spec


def _parse(spec: GlueTask, file: Path, number: int, line: str) -> LabeledText:
    fields = line.split("\t")
    if len(fields) != len(spec.columns):
        raise DataError(f"{file}, line {number}: expected {len(spec.columns)} tab-separated fields "
                        f"({', '.join(spec.columns)}), found {len(fields)}. Is a tab missing or doubled?")
    row = dict(zip(spec.columns, fields, strict=True))
    raw = row[spec.label].strip()
    if raw not in spec.label_values:
        raise DataError(f"{file}, line {number}: label {raw!r} is not one of {', '.join(spec.label_values)}; "
                        "fix the label or check that the file belongs to this task.")
    if not row[spec.text].strip():
        raise DataError(f"{file}, line {number}: the {spec.text!r} field is empty; fill it or drop the row.")
    return LabeledText(
        text=row[spec.text],
        text_pair=None if spec.text_pair is None else row[spec.text_pair],
        label=spec.label_values.index(raw),
    )
