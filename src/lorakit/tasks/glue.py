"""GLUE classification tasks (Wang et al., 2019): a classifier head over the pooled sequence, scored by accuracy,
plus F1 for MRPC and Matthews correlation for CoLA; test predictions in GLUE's submission format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lorakit.data.glue import GlueTask as GlueLayout
from lorakit.data.glue import glue_task, read_glue
from lorakit.data.records import LabeledText
from lorakit.evaluate.metrics import accuracy, f1, matthews_corrcoef
from lorakit.tasks.base import Evaluate, Split, lines_file, write_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lorakit.data import Example
    from lorakit.evaluate.config import DecodeConfig


@dataclass(frozen=True)
class Glue:
    """One GLUE task (sst2, mrpc, rte or cola) as a sequence classification."""

    glue_name: str
    kind: Literal["seq-cls"] = "seq-cls"
    name: str = "glue"
    best_metric: str = "accuracy"
    splits_in_directory: bool = True

    @property
    def layout(self) -> GlueLayout:
        return glue_task(self.glue_name)

    @property
    def num_labels(self) -> int:
        return self.layout.num_labels

    def read(self, path: str | Path, split: Split) -> list[LabeledText]:
        return read_glue(self.glue_name, path, split if Path(path).is_dir() else None)

    def tokenize(self, records: Sequence[LabeledText], tokenizer: PreTrainedTokenizerBase,
                 max_length: int) -> list[Example]:
        from lorakit.data.tokenize import tokenize_labeled

        return tokenize_labeled(records, tokenizer, max_length)

    def dev_metrics(self, dev_examples: Sequence[Example], pad_id: int) -> Evaluate:
        from lorakit.evaluate.score import classify

        labels = [e.labels[0] for e in dev_examples]
        return lambda model: self.scores(classify(model, dev_examples, pad_id), labels)

    def predict(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: Sequence[LabeledText],
                decode: DecodeConfig, max_length: int, progress: bool = True) -> list[int]:
        from lorakit.evaluate.score import classify

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return classify(model, self.tokenize(records, tokenizer, max_length), pad)

    def score(self, records: Sequence[LabeledText], predictions: Sequence[int]) -> dict[str, float | None] | None:
        if any(r.label is None for r in records):
            return None  # GLUE's test labels are not public
        return self.scores(predictions, [r.label for r in records])

    def scores(self, predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
        """accuracy for every task, plus F1 for MRPC and Matthews correlation for CoLA (fractions, as sklearn)."""
        scores = {"accuracy": accuracy(predictions, labels)}
        if self.glue_name == "mrpc":
            scores["f1"] = f1(predictions, labels)
        if self.glue_name == "cola":
            scores["matthews_corrcoef"] = matthews_corrcoef(predictions, labels)
        return scores

    def write_predictions(self, out: Path, records: Sequence[LabeledText], predictions: Sequence[int]) -> list[Path]:
        """predictions.txt (a label name per line) and, for an indexed (test) split, GLUE's submission file:
        `index<TAB>prediction` with the label as GLUE's files write it, named as its server expects (SST-2.tsv)."""
        layout = self.layout
        files = [lines_file(out / "predictions.txt", [layout.label_names[p] for p in predictions])]
        if all(r.id is not None for r in records):
            rows = "".join(f"{r.id}\t{layout.label_values[p]}\n" for r, p in zip(records, predictions, strict=True))
            files.append(write_text(out / layout.submission, "index\tprediction\n" + rows))
        return files
