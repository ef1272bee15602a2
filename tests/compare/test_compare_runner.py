"""`lorakit compare` end to end on a tiny GPT-2 and a tiny E2E set: results, reports, skip/resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from commands import run_cli
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lorakit.core.errors import ConfigError

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "->", "[", "]", ",", ".", "name", "food", "area", "the", "fox", "pub",
         "serves", "italian", "french", "in", "city", "centre", "riverside", "is", "a", "Fox", "Mill", "The"]
FOODS, AREAS, NAMES = ["italian", "french"], ["riverside", "city centre"], ["Fox", "Mill"]


def write_model(directory: Path, llama: bool = False) -> None:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    common = {"vocab_size": len(WORDS), "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
    if llama:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, max_position_embeddings=256, **common))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def write_e2e(directory: Path) -> None:
    directory.mkdir()
    rows = [(f"name[{n}], food[{f}], area[{a}]", f"{n} serves {f} food in the {a} .")
            for n in NAMES for f in FOODS for a in AREAS]
    for file, chosen in (("trainset.csv", rows * 2), ("devset.csv", rows[:4])):
        (directory / file).write_text("mr,ref\n" + "".join(f'"{mr}","{ref}"\n' for mr, ref in chosen))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    write_model(root / "gpt2")
    write_model(root / "llama", llama=True)
    write_e2e(root / "e2e")
    return root


def run(root: Path, out: Path, *extra: str, model: str = "gpt2") -> int:
    return run_cli("compare", [
        "--model.name", str(root / model), "--data.task", "e2e", "--data.train", str(root / "e2e"),
        "--data.dev_limit", "4", "--out", str(out), "--seeds", "1", "--train.steps", "4", "--train.eval_every", "2",
        "--train.batch_size", "4", "--generate-limit", "2", "--curve-inputs", "2", "--beams", "1",
        "--lora.targets", "c_attn", "--method_options.bottleneck", "4", "--latency-batches", "1",
        "--latency-lengths", "8", "--latency-repeats", "2", "--quiet", *extra])


@pytest.fixture(scope="module")
def finished(setup) -> Path:
    out = setup / "out"
    assert run(setup, out, "--methods", "lora,adapter-h") == 0
    return out


def test_compare_writes_results_for_every_method_and_seed(finished):
    results = json.loads((finished / "results.json").read_text())
    assert [(r["label"], r["seed"]) for r in results["runs"]] == [("lora", 0), ("adapter-h", 0)]
    for run_result in results["runs"]:
        assert run_result["trainable_params"] > 0
        assert {"dev_loss", "BLEU"} <= set(run_result["metrics"])
        dev = [r for r in run_result["records"] if r["split"] == "dev"]
        assert [r["step"] for r in dev] == [2, 4]
        assert all(0 <= r["greedy_BLEU"] <= 100 for r in dev)  # the main metric's curve, at every evaluation
        assert run_result["cost"]["checkpoint_mb"] > 0
    cell = results["latency"][0]
    assert {"base", "lora (merged)", "lora (unmerged)", "adapter-h"} == set(cell["seconds"])


def test_reports_hold_the_tables_and_embedded_plots(finished):
    md, page = (finished / "report.md").read_text(), (finished / "report.html").read_text()
    for heading in ("Quality", "Convergence", "Cost", "Inference latency"):
        assert heading in md and heading in page
    assert "| adapter-h |" in md and "dev_loss_seconds.png" in md and (finished / "dev_loss_steps.png").is_file()
    assert (finished / "greedy_BLEU_steps.png").is_file() and "greedy_BLEU_seconds.png" in md
    assert page.count("data:image/png;base64,") >= 4


def test_rerunning_skips_finished_runs(setup, finished):
    done = finished / "runs" / "lora" / "seed0" / "result.json"
    before = done.stat().st_mtime_ns
    assert run(setup, finished, "--methods", "lora,adapter-h", "--no-latency") == 0
    assert done.stat().st_mtime_ns == before


def test_an_unfinished_run_resumes_from_its_checkpoint_instead_of_retraining(setup, tmp_path):
    out = tmp_path / "out"
    assert run(setup, out, "--methods", "lora", "--no-latency") == 0
    result = out / "runs" / "lora" / "seed0" / "result.json"
    first = json.loads(result.read_text())
    result.unlink()  # as if the process died after the last checkpoint, before writing its result
    assert run(setup, out, "--methods", "lora", "--no-latency") == 0
    again = json.loads(result.read_text())
    steps = lambda r: [(x["step"], x["train_seconds"]) for x in r["records"] if x["split"] == "train"]  # noqa: E731
    assert steps(again) == steps(first)


def test_sigterm_stops_compare_after_a_checkpoint_with_exit_143_and_the_same_command_continues(
    setup, tmp_path, monkeypatch
):
    import os
    import signal

    from lorakit.cli import main
    from lorakit.compare.runner import Timeline

    record = Timeline.record

    def terminate_at_step_1(self, entry):
        record(self, entry)
        if entry["split"] == "train" and entry["step"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the loop's handler: it stops after this step

    argv = ["compare", "--model.name", str(setup / "gpt2"), "--data.task", "e2e", "--data.train", str(setup / "e2e"),
            "--data.dev_limit", "4", "--out", str(tmp_path), "--methods", "lora", "--train.steps", "4",
            "--train.eval_every", "2", "--train.batch_size", "4", "--seeds", "1", "--generate-limit", "2",
            "--curve-inputs", "2", "--beams", "1", "--lora.targets", "c_attn", "--no-latency", "--quiet"]
    monkeypatch.setattr(Timeline, "record", terminate_at_step_1)
    assert main(argv) == 128 + signal.SIGTERM
    assert not (tmp_path / "results.json").exists()
    monkeypatch.setattr(Timeline, "record", record)
    assert main(argv) == 0 and (tmp_path / "results.json").is_file()


def test_unknown_methods_are_listed_with_the_known_ones(setup, tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'lorra'; known methods are full, ft-top2, bitfit"):
        run(setup, tmp_path, "--methods", "lora,lorra")


def test_bitfit_on_a_bias_free_model_is_refused_before_training(setup, tmp_path):
    with pytest.raises(ConfigError, match="bitfit cannot apply .*has none"):
        run(setup, tmp_path, "--methods", "lora,bitfit", "--lora.targets", "q_proj", model="llama")
    assert not (tmp_path / "runs").exists()


def test_a_budget_too_small_to_evaluate_is_refused_up_front(setup, tmp_path):
    with pytest.raises(ConfigError, match="fewer than two dev evaluations"):
        run(setup, tmp_path, "--methods", "lora", "--train.eval_every", "3")


def test_a_cpu_run_on_a_machine_with_a_gpu_reports_the_cpu_estimate_and_leaves_cuda_alone(setup, tmp_path,
                                                                                           monkeypatch):
    # As on a GPU machine told --train.device cpu: no CUDA counter may be reset or read (it would describe another
    # device; on this CPU-only torch, touching CUDA raises).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "out"
    assert run(setup, out, "--methods", "lora", "--no-latency", "--train.device", "cpu") == 0
    cost = json.loads((out / "runs" / "lora" / "seed0" / "result.json").read_text())["cost"]
    assert cost["peak_memory_kind"] == "estimate" and cost["peak_memory_mb"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_run_reports_cuda_peak_memory_and_gpu_latency(setup, tmp_path):
    out = tmp_path / "out"
    assert run(setup, out, "--methods", "lora", "--train.device", "cuda") == 0
    results = json.loads((out / "results.json").read_text())
    cost = results["runs"][0]["cost"]
    assert cost["peak_memory_kind"] == "cuda max allocated" and cost["peak_memory_mb"] > 0
    assert all(s > 0 for s in results["latency"][0]["seconds"].values())
