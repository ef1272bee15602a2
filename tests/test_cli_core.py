"""`lorakit info` and `lorakit merge` on a tiny local model directory (the merged output needs no lorakit)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from tiny import randomize, tiny_llama, tiny_tokenizer
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.cli import main


@pytest.fixture
def model_dir(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_info_lists_modules_and_what_a_config_trains(model_dir, capsys):
    assert main(["info", "--model", str(model_dir), "--targets", "q_proj,v_proj", "--rank", "4"]) == 0
    out = capsys.readouterr().out
    assert "q_proj" in out and "32x32" in out and "down_proj" in out
    assert "trainable params: 896" in out


def test_info_with_a_bad_target_prints_the_error_and_exits_2(model_dir, capsys):
    assert main(["info", "--model", str(model_dir), "--targets", "query"]) == 2
    err = capsys.readouterr().err
    assert "matched no module" in err and "q_proj: Linear x2" in err


def test_merge_writes_a_directory_that_transformers_loads_without_lorakit(model_dir, tmp_path):
    model = lorakit.inject(AutoModelForCausalLM.from_pretrained(model_dir), lorakit.LoraConfig(rank=4))
    randomize(model)
    lorakit.save_adapter(model, tmp_path / "adapter")
    ids = torch.randint(4, 128, (2, 6))
    with torch.no_grad():
        expect = model(ids).logits
    assert main(["merge", "--model", str(model_dir), "--adapter", str(tmp_path / "adapter"),
                 "--out", str(tmp_path / "merged")]) == 0
    code = (
        "import sys, torch; sys.modules['lorakit'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'merged')!r})\n"
        f"ids = torch.tensor({ids.tolist()})\n"
        f"torch.save(m(ids).logits.detach(), {str(tmp_path / 'logits.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    got = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert (got - expect).abs().max() <= 1e-5


def test_merge_refuses_an_adapter_for_another_model(model_dir, tmp_path, capsys):
    from tiny import tiny_gpt2

    other = lorakit.inject(tiny_gpt2(), lorakit.LoraConfig(rank=2, targets=("c_attn",)))
    lorakit.save_adapter(other, tmp_path / "gpt2-adapter")
    assert main(["merge", "--model", str(model_dir), "--adapter", str(tmp_path / "gpt2-adapter"),
                 "--out", str(tmp_path / "m")]) == 2
    assert "different base model" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_merge_refuses_a_non_empty_out_directory_unless_overwrite(model_dir, tmp_path, capsys):
    model = lorakit.inject(tiny_llama(), lorakit.LoraConfig(rank=2))
    randomize(model)
    lorakit.save_adapter(model, tmp_path / "adapter")
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["merge", "--model", str(model_dir), "--adapter", str(tmp_path / "adapter"), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "precious is not empty" in err and "--overwrite" in err
    assert (out / "notes.txt").read_text() == "mine"
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "precious"]


def test_building_the_parser_imports_neither_torch_nor_transformers():
    # What keeps `lorakit --help`, and each command's --help, fast: only a command's own module is imported, and
    # the config schemas it reads do not import torch or transformers.
    code = ("import sys\nfrom lorakit.cli import COMMANDS, build_parser\n"
            "for name in [None, *COMMANDS]:\n"
            "    build_parser(name).format_help()\n"
            "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_abbreviated_options_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--train.step", "2"])
    assert "unrecognized arguments: --train.step" in capsys.readouterr().err


def test_negative_numbers_are_values_not_options():
    from commands import parse

    from lorakit.cli.options import given
    from lorakit.train.config import RunConfig

    args = parse("train", ["--train.lr", "-1e-4", "--train.seed", "-3", "--lora.alpha", "-.5"])
    assert given(args, RunConfig) == {"train.lr": -1e-4, "train.seed": -3, "lora.alpha": -0.5}
    with pytest.raises(lorakit.ConfigError, match="train.lr: Input should be greater than 0 .got -0.0001."):
        main_raising(["train", "--train.lr", "-1e-4"])


def test_text_options_keep_the_text_as_typed():
    from commands import parse

    from lorakit.cli.options import given
    from lorakit.train.config import RunConfig

    args = parse("train", ["--run_dir", "2026", "--model.name", "1.0", "--data.train", "null", "--data.dev", "null"])
    assert given(args, RunConfig) == {"run_dir": "2026", "model.name": "1.0", "data.train": "null", "data.dev": None}


@pytest.mark.parametrize("argv, policy", [(["train", "missing.yaml"], "PASSIVE"),
                                          (["info", "--model", "missing"], None)])
def test_training_commands_let_openmp_threads_sleep_at_barriers(argv, policy, tmp_path):
    code = "import os, sys; from lorakit.cli import main; main(sys.argv[1:]); print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == str(policy)


def main_raising(argv):
    from commands import run_cli

    return run_cli(argv[0], argv[1:])


def test_no_progress_silences_progress_bars_and_transformers_loading_messages(model_dir, tmp_path):
    env = {**__import__("os").environ, "TQDM_MININTERVAL": "0"}
    done = subprocess.run([sys.executable, "-m", "lorakit", "info", "--model", str(model_dir), "--kind", "seq-cls",
                           "--num-labels", "2", "--no-progress"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "LOAD REPORT" not in done.stderr, done.stderr
    loud = subprocess.run([sys.executable, "-m", "lorakit", "info", "--model", str(model_dir), "--kind", "seq-cls",
                           "--num-labels", "2"], capture_output=True, text=True, env=env)
    assert "LOAD REPORT" in loud.stderr  # the check above can fail: without the flag transformers does print it
