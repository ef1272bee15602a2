"""GLUE readers (Wang et al., 2019) for the four tasks the LoRA paper's RoBERTa/DeBERTa tables include
and that fit a quick run: SST-2, MRPC, RTE and CoLA, from the original GLUE TSV files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakit.data.errors import DataError
from lorakit.data.files import lines, read_text, resolve
from lorakit.data.records import LabeledText

GlueSplit = Literal["train", "dev", "test"]


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task's TSV is laid out and scored."""

    columns: tuple[str, ...]
    """Column names in file order; the header line must equal them exactly (CoLA has no header)."""
    test_columns: tuple[str, ...]
    """The unlabeled test file's header: GLUE's test files start with an index column and have no label."""
    submission: str
    """The file name GLUE's submission server expects for this task's test predictions, e.g. SST-2.tsv."""
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
        columns=("sentence", "label"), test_columns=("index", "sentence"), submission="SST-2.tsv",
        has_header=True, text="sentence", text_pair=None, label="label",
        label_values=("0", "1"), label_names=("negative", "positive"), metric="accuracy",
    ),
    "mrpc": GlueTask(
        columns=("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        test_columns=("index", "#1 ID", "#2 ID", "#1 String", "#2 String"), submission="MRPC.tsv", has_header=True,
        text="#1 String", text_pair="#2 String", label="Quality",
        label_values=("0", "1"), label_names=("not_equivalent", "equivalent"), metric="accuracy",
    ),
    "rte": GlueTask(
        columns=("index", "sentence1", "sentence2", "label"), test_columns=("index", "sentence1", "sentence2"),
        submission="RTE.tsv", has_header=True,
        text="sentence1", text_pair="sentence2", label="label",
        label_values=("entailment", "not_entailment"), label_names=("entailment", "not_entailment"),
        metric="accuracy",
    ),
    "cola": GlueTask(
        columns=("source", "label", "mark", "sentence"), test_columns=("index", "sentence"), submission="CoLA.tsv",
        has_header=False, text="sentence", text_pair=None,
        label="label", label_values=("0", "1"), label_names=("unacceptable", "acceptable"),
        metric="matthews_corrcoef",
    ),
}
"""The GLUE tasks lorakit reads, by lower-case name."""

GLUE_FILES: dict[str, tuple[str, ...]] = {"train": ("train.tsv",), "dev": ("dev.tsv",), "test": ("test.tsv",)}


def read_glue(task: str, path: str | Path, split: GlueSplit | None = None) -> list[LabeledText]:
    """Read one GLUE task's examples from a TSV file, or from a directory plus `split`.

    The directory may be the task's own (holding train.tsv, dev.tsv, test.tsv) or the GLUE root holding `task/`.
    A test file (its header is `test_columns`) gives unlabeled examples (label None) carrying their index.
    Fields are split on tabs with no quote handling: GLUE texts contain unbalanced quote characters.
    """
    spec = glue_task(task)
    root = Path(path)
    if root.is_dir() and (root / task.lower()).is_dir():
        root = root / task.lower()
    file = resolve(root, split, GLUE_FILES, f"GLUE {task}")
    rows = lines(read_text(file, f"GLUE {task}"))
    start = 0
    first = tuple(rows[0].split("\t")) if rows else ()
    test = first == spec.test_columns
    if test or spec.has_header:
        if not test and first != spec.columns:
            raise DataError(f"{file}, line 1: columns are {list(first)}; expected {list(spec.columns)} (or, for "
                            f"the unlabeled test file, {list(spec.test_columns)}) for {task}. Check the task name.")
        start = 1
    if split in ("train", "dev") and test:
        raise DataError(f"{file} is an unlabeled GLUE test file; the {split} split needs labels")
    records = [_parse(spec, file, number, line, test)
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


def _parse(spec: GlueTask, file: Path, number: int, line: str, test: bool) -> LabeledText:
    columns = spec.test_columns if test else spec.columns
    fields = line.split("\t")
    if len(fields) != len(columns):
        raise DataError(f"{file}, line {number}: expected {len(columns)} tab-separated fields "
                        f"({', '.join(columns)}), found {len(fields)}. Is a tab missing or doubled?")
    row = dict(zip(columns, fields, strict=True))
    if not row[spec.text].strip():
        raise DataError(f"{file}, line {number}: the {spec.text!r} field is empty; fill it or drop the row.")
    text_pair = None if spec.text_pair is None else row[spec.text_pair]
    if test:
        return LabeledText(text=row[spec.text], text_pair=text_pair, label=None, id=row["index"].strip())
    raw = row[spec.label].strip()
    if raw not in spec.label_values:
        raise DataError(f"{file}, line {number}: label {raw!r} is not one of {', '.join(spec.label_values)}; "
                        "fix the label or check that the file belongs to this task.")
    return LabeledText(text=row[spec.text], text_pair=text_pair, label=spec.label_values.index(raw))
