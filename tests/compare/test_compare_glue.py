"""`lorakit compare --data.task glue` end to end on a tiny BERT and a tiny SST-2-shaped set: accuracy per method and
seed, the reports, and `lorakit eval` on a run's weights."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from commands import run_cli
from tiny import tiny_bert
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "food", "was", "good", "bad", "very", "service", "a", "pub",
         "not", "great", "awful", "in", "city", "centre"]
METHODS = ["lora", "bitfit", "adapter-h"]


def write_model(directory: Path) -> None:
    """A tiny random BERT classifier plus a word-level tokenizer that adds [CLS] ... [SEP] like BERT's."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    # tiny_bert's sizes (vocabulary 128 >= len(WORDS); pad id 0 is [PAD]) with larger initial weights: at BERT's
    # 0.02 the pooled [CLS] output hardly depends on the input, so every run predicts one class (accuracy 0.5).
    config = tiny_bert(num_labels=2).config
    config.initializer_range = 0.3
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def write_sst2(directory: Path) -> None:
    """train.tsv and dev.tsv in SST-2's format (a `sentence<TAB>label` header, label 1 for the 'good' sentences), and
    an unlabeled test.tsv (`index<TAB>sentence`, as GLUE's test files) whose indices are not in file order."""
    rng = random.Random(0)
    filler = ["the", "food", "was", "very", "service", "a", "pub", "in", "city", "centre"]

    def rows(n: int) -> str:
        lines = []
        for i in range(n):
            words = [rng.choice(filler) for _ in range(rng.randint(2, 5))] + [("good", "bad")[i % 2]]
            rng.shuffle(words)
            lines.append(f"{' '.join(words)}\t{1 - i % 2}\n")
        return "sentence\tlabel\n" + "".join(lines)

    directory.mkdir()
    (directory / "train.tsv").write_text(rows(16))
    (directory / "dev.tsv").write_text(rows(6))
    test = [line.split("\t")[0] for line in rows(5).splitlines()[1:]]
    (directory / "test.tsv").write_text("index\tsentence\n" + "".join(f"{10 - i}\t{t}\n" for i, t in enumerate(test)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare-glue")
    write_model(root / "bert")
    write_sst2(root / "sst2")
    assert run_cli("compare", [
        "--model.name", str(root / "bert"), "--data.task", "glue", "--data.glue_task", "sst2",
        "--data.train", str(root / "sst2"), "--data.max_length", "16", "--out", str(root / "out"),
        "--methods", ",".join(METHODS), "--seeds", "2", "--lr", "5e-2", "--train.steps", "4",
        "--train.eval_every", "2", "--train.batch_size", "4", "--train.device", "cpu", "--lora.targets", "query,value",
        "--method_options.bottleneck", "4", "--latency-batches", "1", "--latency-lengths", "8",
        "--latency-repeats", "2", "--quiet"]) == 0
    return root


def test_glue_compare_reports_accuracy_for_every_method_and_seed(finished) -> None:
    results = json.loads((finished / "out" / "results.json").read_text())
    assert [(r["label"], r["seed"]) for r in results["runs"]] == [(m, s) for m in METHODS for s in (0, 1)]
    for run in results["runs"]:
        assert 0.0 <= run["metrics"]["accuracy"] <= 1.0 and "dev_loss" in run["metrics"]
        assert [r["step"] for r in run["records"] if r["split"] == "dev" and "accuracy" in r] == [2, 4]
        assert run["trainable_params"] > 0 and run["cost"]["checkpoint_mb"] > 0
    assert len({r["metrics"]["accuracy"] for r in results["runs"]}) > 1  # the metric tells the runs apart
    assert set(results["summary"]) == set(METHODS)
    assert all(s["seeds"] == 2 and "accuracy" in s["metrics"] for s in results["summary"].values())
    assert {"base", "lora (merged)", "lora (unmerged)", "adapter-h"} == set(results["latency"][0]["seconds"])


def test_glue_compare_writes_the_reports_with_an_accuracy_curve(finished) -> None:
    md = (finished / "out" / "report.md").read_text()
    assert "(sst2)" in md and "accuracy" in md
    for method in METHODS:
        assert f"| {method} |" in md
    assert (finished / "out" / "accuracy_steps.png").is_file()
    assert (finished / "out" / "report.html").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_lorakit_eval_on_a_runs_weights_reproduces_its_final_dev_accuracy(finished, method) -> None:
    seed0 = finished / "out" / "runs" / method / "seed0"
    out = finished / f"eval-{method}"
    assert run_cli("eval", ["--model", str(finished / "bert"), "--adapter", str(seed0 / "final" / "adapter"),
                            "--task", "glue", "--glue-task", "sst2", "--data", str(finished / "sst2"),
                            "--device", "cpu", "--out", str(out)]) == 0
    scored = json.loads((out / "metrics.json").read_text())
    trained = json.loads((seed0 / "result.json").read_text())  # its metrics are the last (step 4) dev evaluation
    assert scored["count"] == 6 and scored["metrics"]["accuracy"] == trained["metrics"]["accuracy"]


def test_lorakit_eval_on_the_test_split_writes_glue_submission_file_in_test_order(finished) -> None:
    weights = finished / "out" / "runs" / "lora" / "seed0" / "final" / "adapter"
    out = finished / "eval-test"
    common = ["--model", str(finished / "bert"), "--adapter", str(weights), "--task", "glue", "--glue-task", "sst2",
              "--data", str(finished / "sst2"), "--device", "cpu"]
    assert run_cli("eval", [*common, "--split", "test", "--out", str(out)]) == 0
    rows = (out / "SST-2.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and [r.split("\t")[0] for r in rows[1:]] == ["10", "9", "8", "7", "6"]
    assert {r.split("\t")[1] for r in rows[1:]} <= {"0", "1"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] is None and saved["split"] == "test" and "SST-2.tsv" in saved["note"]
    # The same sentences as a labeled dev file get the same predictions: the submission is the model's answers.
    sentences = [line.split("\t")[1] for line in (finished / "sst2" / "test.tsv").read_text().splitlines()[1:]]
    (finished / "as-dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t0\n" for s in sentences))
    assert run_cli("eval", [*common[:-4], "--data", str(finished / "as-dev.tsv"), "--device", "cpu",
                            "--out", str(finished / "eval-as-dev")]) == 0
    names = (finished / "eval-as-dev" / "predictions.txt").read_text().splitlines()
    assert ["01"[n == "positive"] for n in names] == [r.split("\t")[1] for r in rows[1:]]
