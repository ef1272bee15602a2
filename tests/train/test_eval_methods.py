"""`lorakit eval` / `generate` on runs of the comparison methods: load_trained rebuilds what a method trained (adapters,
prefixes, DoRA, LoRA+prefix) from its run's weights, merged where merge is defined, and the CLI scores such a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from commands import run_cli
from tinytrain import WORDS, tiny_pairs

from lorakit.cli import eval as eval_cli
from lorakit.cli import generate as generate_cli
from lorakit.cli import train as train_cli
from lorakit.core.config import LoraConfig
from lorakit.core.merge import merged_names
from lorakit.data import tokenize_pairs
from lorakit.methods import METHODS, MethodOptions
from lorakit.models import load
from lorakit.train.config import RunConfig, TrainConfig
from lorakit.train.loop import fit
from lorakit.trained import load_trained

TRAINED = ["adapter-h", "prefix-layer", "dora", "lora+prefix"]
IDS = torch.randint(4, len(WORDS), (2, 7), generator=torch.Generator().manual_seed(3))




def train_two_steps(method: str, model_dir: Path, out: Path) -> torch.nn.Module:
    """The model `method` trained for two steps on tiny pairs (in memory, eval mode); its weights go to `out`."""
    model, tokenizer = load(str(model_dir), kind="causal-lm")
    config = RunConfig(method=method, lora=LoraConfig(rank=4), method_options=MethodOptions(bottleneck=4,
                                                                                            prefix_length=3))
    torch.manual_seed(0)
    export = METHODS[method].prepare(model, config.lora, config.method_options)
    examples = tokenize_pairs(tiny_pairs(8), tokenizer, 32)
    fit(model, examples, TrainConfig(steps=2, batch_size=4, lr=1e-2, device="cpu", precision="fp32"),
        pad_id=tokenizer.pad_token_id, export=export, progress=False)
    export.write(model, out)
    return model.eval()


@pytest.mark.parametrize("method", TRAINED)
def test_load_trained_gives_the_trained_models_logits(method, model_dir, tmp_path) -> None:
    model = train_two_steps(method, model_dir, tmp_path / "adapter")
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
        loaded, _ = load_trained(str(model_dir), tmp_path / "adapter", "causal-lm", None, device="cpu")
        got = loaded(input_ids=IDS).logits
        base = load(str(model_dir), kind="causal-lm")[0].eval()(input_ids=IDS).logits
    assert not torch.allclose(base, expected, atol=1e-3)  # training changed something worth reloading
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    # The LoRA family's update (DoRA's too) is folded into W; adapters and prefixes keep their modules.
    assert merged_names(loaded) == (["default"] if method in ("dora", "lora+prefix") else [])


@pytest.mark.parametrize("method", ["adapter-h", "dora", "lora+prefix"])
def test_bf16_casts_the_methods_weights_after_loading(method, model_dir, tmp_path) -> None:
    model = train_two_steps(method, model_dir, tmp_path / "adapter")
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
        loaded, _ = load_trained(str(model_dir), tmp_path / "adapter", "causal-lm", None, device="cpu",
                                 precision="bf16")
        got = loaded(input_ids=IDS).logits
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() < 0.02 * expected.abs().max()  # bf16 keeps ~3 significant digits


@pytest.mark.filterwarnings("ignore:METEOR skipped")
@pytest.mark.parametrize(("method", "size"), [("adapter-h", "bottleneck"), ("prefix-layer", "prefix_length")])
def test_eval_and_generate_run_on_a_method_run(method, size, tmp_path, model_dir, jsonl_data, capsys) -> None:
    run = tmp_path / "run"
    assert run_cli(train_cli, [
        "--model.name", str(model_dir), "--method", method, f"--method_options.{size}", "3",
        "--data.task", "jsonl", "--data.train", str(jsonl_data[0]),
        "--data.dev", str(jsonl_data[1]), "--data.max_length", "32", "--train.steps", "2", "--train.lr", "1e-2",
        "--device", "cpu", "--run_dir", str(run), "--no-progress"]) == 0
    assert (run / "final" / "adapter" / "lorakit_method.json").is_file()

    out = tmp_path / "eval"
    assert run_cli(eval_cli, ["--run", str(run), "--beams", "2", "--max-new-tokens", "3", "--device", "cpu",
                              "--out", str(out)]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["count"] == 8 and Path(saved["adapter"]).parent.parent == run
    assert set(saved["metrics"]) == {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
    capsys.readouterr()
    assert run_cli(generate_cli, ["--run", str(run), "--prompt", "the fox eats ->", "--prompt", "a pub ->",
                                  "--beams", "2", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
