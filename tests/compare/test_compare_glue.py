"""`lorakit compare --task glue` end to end on a tiny BERT and a tiny SST-2-shaped set: accuracy per method and seed,
the reports, and `lorakit eval` on a run's weights."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest
import torch
from tiny import tiny_bert
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

from lorakit.cli import compare as cli
from lorakit.cli import eval as eval_cli

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
    """train.tsv and dev.tsv in SST-2's format: a `sentence<TAB>label` header, label 1 for the 'good' sentences."""
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


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare-glue")
    write_model(root / "bert")
    write_sst2(root / "sst2")
    p = argparse.ArgumentParser()
    cli.add_parser(p)
    args = p.parse_args(["--model", str(root / "bert"), "--task", "glue", "--glue-task", "sst2", "--data",
                         str(root / "sst2"), "--out", str(root / "out"), "--methods", ",".join(METHODS),
                         "--steps", "4", "--eval-every", "2", "--seeds", "2", "--lr", "5e-2", "--batch-size", "4",
                         "--max-length", "16", "--targets", "query,value", "--bottleneck", "4", "--device", "cpu",
                         "--latency-batches", "1", "--latency-lengths", "8", "--latency-repeats", "2", "--quiet"])
    assert cli.run(args) == 0
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
    p = argparse.ArgumentParser()
    eval_cli.add_parser(p)
    out = finished / f"eval-{method}"
    assert eval_cli.run(p.parse_args(["--model", str(finished / "bert"), "--adapter", str(seed0 / "final" / "adapter"),
                                      "--task", "glue", "--glue-task", "sst2", "--data", str(finished / "sst2"),
                                      "--device", "cpu", "--out", str(out)])) == 0
    scored = json.loads((out / "metrics.json").read_text())
    trained = json.loads((seed0 / "result.json").read_text())  # its metrics are the last (step 4) dev evaluation
    assert scored["count"] == 6 and scored["metrics"]["accuracy"] == trained["metrics"]["accuracy"]
