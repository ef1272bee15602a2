"""`lorakit train` end to end on a tiny model directory: what a run directory holds, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from commands import run_cli

from lorakit.cli import eval as eval_cli
from lorakit.cli import train as train_cli
from lorakit.core.errors import ConfigError


def test_a_run_directory_holds_config_metrics_events_plot_checkpoints_and_weights(tmp_path, model_dir,
                                                                                  jsonl_data) -> None:
    run = tmp_path / "run"
    args = ["--model.name", str(model_dir), "--data.task", "jsonl", "--data.train", str(jsonl_data[0]),
            "--data.dev", str(jsonl_data[1]), "--data.max_length", "32", "--train.steps", "4", "--train.lr", "5e-3",
            "--train.save_every", "2", "--train.eval_every", "2", "--device", "cpu", "--run_dir", str(run),
            "--no-progress"]
    assert run_cli(train_cli, args) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["lr"] == 5e-3 and saved["model"]["name"] == str(model_dir)
    counts = json.loads((run / "params.json").read_text())
    assert counts["method"] == "lora" and 0 < counts["trainable_params"] < counts["total_params"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["split"] == "dev"] == [2, 4]
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    for weights in (run / "final" / "adapter", run / "best" / "adapter"):
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
            p.name for p in weights.iterdir()}

    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run_cli(train_cli, args)
    with pytest.raises(ConfigError, match="train.lr changed"):
        run_cli(train_cli, [*args[:-5], "--train.lr", "1e-3", "--run_dir", str(run), "--resume", "--no-progress"])

    out = tmp_path / "eval"
    assert run_cli(eval_cli, ["--run", str(run), "--task", "jsonl", "--beams", "2", "--max-new-tokens", "3",
                              "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["count"] == 8


def test_a_bad_override_is_reported_before_any_model_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        run_cli(train_cli, ["--train.lr", "fast", "--lora.rank", "0", "--model.name", str(tmp_path / "missing")])
    assert "train.lr" in str(error.value) and "lora.rank" in str(error.value)


@pytest.mark.parametrize("header,rows", [("MR", ['"name[A], food[Thai]"']),
                                         ("mr,ref", ['"name[A], food[Thai]",A serves Thai food.'])])
def test_training_data_without_references_is_refused_before_any_model_loads(tmp_path, header, rows) -> None:
    from lorakit.data import DataError

    data = tmp_path / "e2e"
    data.mkdir()
    (data / "trainset.csv").write_text("\n".join([header, *rows * 8]) + "\n")
    (data / "devset.csv").write_text('MR\n"name[B], food[Thai]"\n')  # no ref column: as testset.csv
    args = ["--data.task", "e2e", "--data.train", str(data), "--model.name", str(tmp_path / "missing"),
            "--run_dir", str(tmp_path / "run"), "--no-progress"]
    with pytest.raises(DataError, match="has no references.*no 'ref' column"):
        run_cli(train_cli, args)
    assert not (tmp_path / "run").exists()
