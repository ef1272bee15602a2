"""`lorakit eval` and `lorakit generate` on a tiny model: predictions without references, metrics with them."""

from __future__ import annotations

import json

import pytest
import torch
from commands import run_cli
from transformers import BertConfig, BertForSequenceClassification

from lorakit.cli import eval as eval_cli
from lorakit.cli import generate as generate_cli
from lorakit.data import DataError, Example
from lorakit.evaluate.score import classify
from lorakit.tasks.glue import Glue

FAST = ["--beams", "2", "--max-new-tokens", "4", "--device", "cpu"]




def test_eval_without_references_writes_one_prediction_per_input_in_order(tmp_path, model_dir, capsys) -> None:
    mrs = ["name the fox , food italian", "name a pub , area city centre", "name the fox , food italian",
           "name the river"]
    (tmp_path / "testset.csv").write_text("MR\n" + "".join(f'"{mr}"\n' for mr in mrs))
    out = tmp_path / "predictions.txt"
    code = run_cli(eval_cli, ["--model", str(model_dir), "--task", "e2e", "--data", str(tmp_path / "testset.csv"),
                              "--split", "test", "--out", str(tmp_path / "eval"), "--predictions-out", str(out),
                              *FAST])
    assert code == 0
    assert len(out.read_text().splitlines()) == 3  # one per unique MR, in first-seen order
    assert "nothing was scored" in capsys.readouterr().err
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["metrics"] is None and saved["count"] == 4 and "no labels or references" in saved["note"]


def test_eval_with_references_scores_each_mr_against_all_its_references(tmp_path, model_dir, capsys) -> None:
    rows = [("name the fox", "the fox is a pub"), ("name the fox", "a pub is the fox"), ("name a pub", "a pub")]
    (tmp_path / "devset.csv").write_text("mr,ref\n" + "".join(f'"{m}","{r}"\n' for m, r in rows))
    with pytest.warns(UserWarning):  # METEOR needs Java and its jar; the other four are computed
        code = run_cli(eval_cli, ["--model", str(model_dir), "--task", "e2e", "--data", str(tmp_path / "devset.csv"),
                                  "--out", str(tmp_path / "eval"), *FAST])
    assert code == 0
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["count"] == 3 and set(saved["metrics"]) == {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
    assert len((tmp_path / "eval" / "predictions.txt").read_text().splitlines()) == 2
    assert "BLEU" in capsys.readouterr().out


def test_saved_predictions_score_as_when_generated_and_a_wrong_count_is_refused(tmp_path, model_dir) -> None:
    rows = [("name the fox", "the fox is a pub"), ("name the fox", "a pub is the fox"), ("name a pub", "a pub")]
    (tmp_path / "devset.csv").write_text("mr,ref\n" + "".join(f'"{m}","{r}"\n' for m, r in rows))
    common = ["--model", str(model_dir), "--task", "e2e", "--data", str(tmp_path / "devset.csv"), *FAST]
    with pytest.warns(UserWarning):
        assert run_cli(eval_cli, [*common, "--out", str(tmp_path / "generated")]) == 0
        assert run_cli(eval_cli, [*common, "--out", str(tmp_path / "scored"),
                                  "--predictions-in", str(tmp_path / "generated" / "predictions.txt")]) == 0
    generated, scored = (json.loads((tmp_path / d / "metrics.json").read_text())["metrics"]
                         for d in ("generated", "scored"))
    assert scored == generated
    (tmp_path / "perfect.txt").write_text("the fox is a pub\na pub\n")
    with pytest.warns(UserWarning):
        assert run_cli(eval_cli, [*common, "--out", str(tmp_path / "perfect"),
                                  "--predictions-in", str(tmp_path / "perfect.txt")]) == 0
    assert json.loads((tmp_path / "perfect" / "metrics.json").read_text())["metrics"]["BLEU"] == pytest.approx(100)
    (tmp_path / "short.txt").write_text("a pub\n")
    with pytest.raises(DataError, match="got 1 predictions for 2 distinct inputs"):
        run_cli(eval_cli, [*common, "--predictions-in", str(tmp_path / "short.txt")])


def test_generate_prints_one_line_per_prompt(tmp_path, model_dir, capsys) -> None:
    code = run_cli(generate_cli, ["--model", str(model_dir), "--task", "e2e", "--prompt", "name the fox",
                                  "--prompt", "name a pub , food french", *FAST])
    assert code == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_glue_scores_add_f1_for_mrpc_and_matthews_for_cola() -> None:
    predictions, labels = [1, 0, 1, 1], [1, 0, 0, 1]
    assert Glue("sst2").scores(predictions, labels) == {"accuracy": 0.75}
    assert set(Glue("mrpc").scores(predictions, labels)) == {"accuracy", "f1"}
    assert Glue("cola").scores(predictions, labels)["matthews_corrcoef"] == pytest.approx(0.5773502691896258)


def test_classify_returns_the_argmax_class_of_each_example_in_order() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=3)).eval()
    examples = [Example(input_ids=[1, 5, 7, 2][: 2 + i % 3], labels=[0]) for i in range(5)]
    got = classify(model, examples, pad_id=0, batch_size=2)
    with torch.no_grad():
        expected = [int(model(torch.tensor([e.input_ids])).logits.argmax()) for e in examples]
    assert got == expected
