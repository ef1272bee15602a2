"""Generation tasks: a causal LM learns to write a completion for a prompt (E2E, instruction data, JSON Lines).

Training scores the completion tokens only; evaluation decodes one text per distinct input and scores it with
the E2E challenge's five metrics against all references of that input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lorakit.data.e2e import e2e_prompt, read_e2e
from lorakit.data.instruct import read_instruct
from lorakit.data.jsonl import read_jsonl
from lorakit.data.records import TextPair, require_completions
from lorakit.tasks.base import Evaluate, Split, lines_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lorakit.data import Example
    from lorakit.evaluate.config import DecodeConfig


@dataclass(frozen=True)
class GenerationTask:
    """A prompt -> completion task read by `reader`; `chat` formats prompts with the tokenizer's chat template."""

    name: str
    reader: Callable[[str, Split | None], list[TextPair]]
    """Reads a file, or a directory plus a split."""
    splits_in_directory: bool
    """Whether the reader finds every split inside one directory (E2E's release), so dev and test default to the
    train directory."""
    chat: bool = False
    prompt: Callable[[str], str] = str
    """Raw input -> prompt, for `lorakit generate`."""
    kind: Literal["causal-lm"] = "causal-lm"
    num_labels: None = None
    best_metric: str = "dev_loss"

    def read(self, path: str | Path, split: Split) -> list[TextPair]:
        records = self.reader(str(path), split if Path(path).is_dir() else None)
        if split != "test":  # training and dev loss need a completion to score
            require_completions(records, path)
        return records

    def tokenize(self, records: Sequence[TextPair], tokenizer: PreTrainedTokenizerBase,
                 max_length: int) -> list[Example]:
        from lorakit.data.tokenize import tokenize_pairs

        return tokenize_pairs(records, tokenizer, max_length, chat=self.chat)

    def dev_metrics(self, dev_examples: Sequence[Example], pad_id: int) -> Evaluate | None:
        # Beam search over a dev set takes far longer than the steps between evaluations; dev loss is reported
        # during training and `lorakit eval` scores the texts afterwards.
        return None

    def predict(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: Sequence[TextPair],
                decode: DecodeConfig, max_length: int, progress: bool = True) -> list[str]:
        from lorakit.evaluate.decode import generate, prompt_ids
        from lorakit.evaluate.score import distinct_inputs

        prompts, _ = distinct_inputs(records)  # records hold prompts already formatted by the reader
        return generate(model, tokenizer, prompt_ids(prompts, tokenizer, max_length, chat=self.chat), decode,
                        progress=progress)

    def score(self, records: Sequence[TextPair], predictions: Sequence[str]) -> dict[str, float | None] | None:
        from lorakit.evaluate.score import score_predictions

        return score_predictions(records, predictions).metrics

    def write_predictions(self, out: Path, records: Sequence[TextPair], predictions: Sequence[str]) -> list[Path]:
        return [lines_file(out / "predictions.txt", predictions)]

    def input_ids(self, inputs: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[list[int]]:
        """Token ids of raw inputs (E2E meaning representations, user messages, prompts) as training formats them."""
        from lorakit.evaluate.decode import prompt_ids

        return prompt_ids([self.prompt(text) for text in inputs], tokenizer, max_length, chat=self.chat)


def _read_one_file(reader: Callable[[str], list[TextPair]]) -> Callable[[str, Split | None], list[TextPair]]:
    return lambda path, split: reader(path)


E2E = GenerationTask("e2e", read_e2e, splits_in_directory=True, prompt=e2e_prompt)
"""The E2E NLG Challenge (Novikova et al., 2017): restaurant meaning representations -> texts."""
INSTRUCT = GenerationTask("instruct", _read_one_file(read_instruct), splits_in_directory=False, chat=True)
"""Instruction data (Alpaca, self-instruct) under the tokenizer's chat template, loss on the answer only; an input
is the user's message."""
JSONL = GenerationTask("jsonl", _read_one_file(read_jsonl), splits_in_directory=False)
"""{"prompt", "completion"} lines, used as written."""
