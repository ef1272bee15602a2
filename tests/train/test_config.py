"""Configs are checked in full before any work: every problem at once, overrides applied, shipped files parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.core.errors import ConfigError
from lorakit.train import TrainConfig, lr_at
from lorakit.train.config import config_from_dict, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_unknown_keys_and_bad_types_are_all_reported_in_one_error(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("methd: lora\nlora: {rank: four, alpah: 3}\ntrain: {lr: fast, steps: 1.5, batchsize: 8}\n"
                    "data: {task: e2e, max_length: x}\n")
    with pytest.raises(ConfigError) as error:
        load_config(file)
    message = str(error.value)
    for fragment in ("unknown key methd", "lora.alpah", "unknown key train.batchsize", "train.lr: Input should be a "
                     "valid number", "train.steps: Input should be a valid integer", "data.max_length: Input should be "
                     "a valid integer", "lora.rank: Input should be a valid integer"):
        assert fragment in message, fragment


def test_command_line_overrides_win_over_the_file_and_read_yaml_scalars(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("train: {lr: 1.0e-3, steps: 10}\nlora: {rank: 4}\n")
    config = load_config(file, {"train.lr": "2e-4", "lora.targets": "[q_proj, k_proj]", "data.dev": "null",
                                "method": "full"})
    assert config.train.lr == 2e-4 and config.train.steps == 10
    assert config.lora.rank == 4 and config.lora.targets == ("q_proj", "k_proj")
    assert config.data.dev is None and config.method == "full"


def test_values_are_checked_beyond_their_types() -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"method": "no-such-method", "train": {"batch_size": 6, "grad_accum": 4, "warmup_steps": 5000},
                          "data": {"task": "glue"}})
    message = str(error.value)
    for fragment in ("method must be one of full, ft-top2", "multiple of grad_accum", "warmup_steps (5000) exceeds",
                     "needs glue_task"):
        assert fragment in message, fragment


def test_the_resolved_config_round_trips_through_its_dict() -> None:
    config = load_config(None, {"train.betas": "[0.9, 0.98]", "lora.layers": "[0, 1]"})
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_parses(path: Path) -> None:
    config = load_config(path)
    assert config.run_dir.endswith(path.stem)


def test_shipped_configs_cover_e2e_and_four_glue_tasks_with_lora_and_full() -> None:
    names = {p.stem for p in CONFIGS}
    expected = {f"{base}-{method}" for base in ("e2e-smollm2", "glue-minilm-sst2", "glue-minilm-mrpc",
                                                "glue-minilm-rte", "glue-minilm-cola") for method in ("lora", "full")}
    assert expected <= names


def test_every_config_field_is_a_train_option_with_its_docstring_as_help() -> None:
    from commands import parse

    from lorakit.cli import build_parser
    from lorakit.cli.options import given
    from lorakit.train.config import RunConfig

    text = " ".join(build_parser("train")._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "--train.label_smoothing" in text and "Label smoothing of the training cross-entropy" in text
    assert "--lora.rank" in text and "Rank r of the update" in text
    args = parse("train", ["cfg.yaml", "--train.lr", "3e-4", "--device", "cpu", "--method", "full"])
    assert given(args, RunConfig) == {"train.lr": 3e-4, "train.device": "cpu", "method": "full"}


def test_the_schedule_warms_up_linearly_then_decays_linearly_to_zero() -> None:
    lrs = [lr_at(step, 1.0, 4, 12) for step in range(12)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]  # peak at the last warmup step
    decay = lrs[4:]  # from peak, equal steps down, to one step short of zero
    assert decay[0] == 1.0 and lr_at(12, 1.0, 4, 12) == 0.0
    steps = [a - b for a, b in zip(decay, decay[1:], strict=False)]
    assert all(d == pytest.approx(1 / 8) for d in steps)
    assert [lr_at(s, 2.0, 0, 4) for s in range(4)] == [2.0, 1.5, 1.0, 0.5]


def test_train_config_reports_all_value_problems_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        TrainConfig(steps=0, lr=-1.0, label_smoothing=1.5, device="tpu")
    assert str(error.value).count("\n  - ") == 4
