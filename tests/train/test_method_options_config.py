"""The run config's method_options section sizes the non-LoRA methods: from YAML and `--method_options.field`, it
reaches the method (parameter counts follow the paper's formulas), and bad keys, types and values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import tiny_gpt2

from lorakit.compare import CompareConfig
from lorakit.compare.runner import run_config
from lorakit.core.errors import ConfigError
from lorakit.methods import METHODS, adapter_count, prefix_embed_count, trainable_count
from lorakit.train.config import config_from_dict, load_config

HIDDEN, LAYERS = 32, 2  # tiny_gpt2


def trained_params(config) -> int:
    model = tiny_gpt2()
    METHODS[config.method].prepare(model, config.lora, config.method_options)  # what `lorakit train` does
    return trainable_count(model)


def test_a_yaml_bottleneck_sizes_adapter_h_and_the_command_line_overrides_it(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("method: adapter-h\nmethod_options: {bottleneck: 16}\n")
    from_file = load_config(file)
    overridden = load_config(file, {"method_options.bottleneck": "32"})
    assert from_file.method_options.bottleneck == 16 and overridden.method_options.bottleneck == 32
    for config in (from_file, overridden):
        r = config.method_options.bottleneck
        # Adapter^H: two adapters and two LayerNorms per block.
        assert trained_params(config) == adapter_count(HIDDEN, r, adapter_layers=2 * LAYERS, layer_norms=2 * LAYERS)


def test_a_prefix_length_sizes_the_prefix_methods() -> None:
    config = config_from_dict({"method": "prefix-embed", "method_options": {"prefix_length": 5}})
    assert trained_params(config) == prefix_embed_count(HIDDEN, 5)


def test_method_options_round_trip_through_the_saved_config() -> None:
    config = config_from_dict({"method": "adapter-l", "method_options": {"bottleneck": 4, "prefix_length": 2}})
    assert config.to_dict()["method_options"] == {"bottleneck": 4, "prefix_length": 2}
    assert config_from_dict(config.to_dict()) == config


def test_unknown_option_keys_are_listed_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown key method_options\.bottlenek; method_options has bottleneck, "
                                          r"prefix_length"):
        config_from_dict({"method": "adapter-h", "method_options": {"bottlenek": 8}})


def test_bad_option_types_and_values_are_named_together() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, {"method": "adapter-h", "method_options.bottleneck": "0",
                           "method_options.prefix_length": "long"})
    message = str(error.value)
    assert "method_options.bottleneck: Input should be greater than or equal to 1 (got 0)" in message
    assert "method_options.prefix_length: Input should be a valid integer" in message and "(got 'long')" in message
    with pytest.raises(ConfigError, match="method_options: Input should be a valid dictionary"):
        config_from_dict({"method_options": 16})


def test_every_option_is_a_train_flag_with_its_docstring_as_help() -> None:
    from commands import parse

    from lorakit.cli import build_parser
    from lorakit.cli.options import given
    from lorakit.train.config import RunConfig

    train_parser = build_parser("train")._subparsers._group_actions[0].choices["train"]
    help_text = " ".join(train_parser.format_help().split())
    assert "--method_options.bottleneck" in help_text and "r of adapter-h and adapter-l" in help_text
    assert "--method_options.prefix_length" in help_text
    args = parse("train", ["--method", "adapter-h", "--method_options.bottleneck", "32"])
    assert given(args, RunConfig)["method_options.bottleneck"] == 32


def test_compare_passes_its_sizes_through_the_run_config(tmp_path: Path) -> None:
    compare = CompareConfig(model={"name": "tiny"}, data={"task": "e2e", "train": str(tmp_path)}, out=str(tmp_path),
                            methods=("adapter-h",), method_options={"bottleneck": 8, "prefix_length": 3})
    config = run_config(compare, "adapter-h", None, 0, tmp_path / "run")
    # Each run records only the sizes its method reads (the others stay at their defaults).
    assert (config.method_options.bottleneck, config.method_options.prefix_length) == (8, 16)
    assert trained_params(config) == adapter_count(HIDDEN, 8, adapter_layers=2 * LAYERS, layer_norms=2 * LAYERS)
    assert run_config(compare, "prefix-layer", None, 0, tmp_path / "run").method_options.prefix_length == 3


def test_an_option_the_method_does_not_read_is_refused_by_name(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("method: lora\nmethod_options: {bottleneck: 32}\n")
    with pytest.raises(ConfigError, match=r"method_options.bottleneck is 32, but method 'lora' does not use it "
                                          r"\(it sizes adapter-h, adapter-l\)"):
        load_config(file)
    with pytest.raises(ConfigError, match="method_options.prefix_length is 4, but method 'adapter-h'"):
        load_config(None, {"method": "adapter-h", "method_options.prefix_length": "4"})
    config = load_config(None, {"method": "lora+prefix", "method_options.prefix_length": "4"})
    assert config.method_options.prefix_length == 4
