"""Contracts that need real processes: SIGTERM checkpoints before exiting, and 2-process data parallelism
(gloo on CPU) computes the same losses as one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tinytrain import tiny_pairs

from lorakit.data import tokenize_pairs
from lorakit.methods import METHODS
from lorakit.models import load
from lorakit.train import fit
from lorakit.train.checkpoint import checkpoints
from lorakit.train.config import load_config


def write_config(path: Path, model_dir: Path, data: tuple[Path, Path], run_dir: Path, **train: object) -> Path:
    config = {
        "run_dir": str(run_dir),
        "model": {"name": str(model_dir)},
        "data": {"task": "jsonl", "train": str(data[0]), "dev": str(data[1]), "max_length": 32},
        "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
        "train": {"batch_size": 8, "lr": 5e-3, "device": "cpu", "precision": "fp32", "seed": 3, **train},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}


def train_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["split"] == "train"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_writes_a_checkpoint_before_the_process_exits_with_128_plus_its_number(tmp_path, model_dir,
                                                                                       jsonl_data, signum) -> None:
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", model_dir, jsonl_data, run, steps=100000)
    process = subprocess.Popen([sys.executable, "-m", "lorakit", "train", str(config), "--no-progress"], env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 3):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training never logged a step"
        time.sleep(0.1)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err  # 143 for SIGTERM, what process managers expect; 130 for SIGINT
    [saved] = checkpoints(run)
    step = json.loads((saved / "state.json").read_text())["step"]
    assert step >= 3 and max(train_losses(run)) == step
    assert (saved / "adapter" / "adapter_config.json").is_file()
    assert "--resume" in err


def test_two_processes_compute_the_losses_of_one_with_the_same_global_batch(tmp_path, model_dir, jsonl_data) -> None:
    run = tmp_path / "ddp"
    config = write_config(tmp_path / "c.yaml", model_dir, jsonl_data, run, steps=4, eval_every=2)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, "-m", "lorakit", "train", str(config), "--no-progress"], env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    # The same run in this process, as lorakit.train.run.train prepares it, accumulating the two halves the two
    # processes computed.
    resolved = load_config(config)
    torch.manual_seed(resolved.train.seed)
    model, tokenizer = load(str(model_dir))
    export = METHODS["lora"].prepare(model, resolved.lora, resolved.method_options)
    train, dev = (tokenize_pairs(tiny_pairs(n, seed), tokenizer, 32) for n, seed in ((64, 0), (8, 1)))
    single = fit(model, train, resolved.train.model_copy(update={"grad_accum": 2}), dev,
                 pad_id=tokenizer.pad_token_id, export=export, progress=False)
    one = {r["step"]: r["loss"] for r in single.records if r["split"] == "train"}
    two = train_losses(run)
    assert sorted(two) == [1, 2, 3, 4]
    for step in two:
        assert two[step] == pytest.approx(one[step], abs=1e-5), step
    dev_one = [r["dev_loss"] for r in single.records if r["split"] == "dev"]
    dev_two = [r["dev_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if r["split"] == "dev"]
    assert dev_two == pytest.approx(dev_one, abs=1e-5)
