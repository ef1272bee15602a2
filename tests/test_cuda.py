"""The same invariants on a CUDA GPU: everything lorakit does on the CPU also runs there, and agrees with it.

Skipped where torch sees no GPU (CI here has none); run on a machine with one by `pytest tests/test_cuda.py`.
Matrix products on the GPU may round differently from the CPU's, so CPU-vs-GPU comparisons allow fp32 rounding
(1e-4 on these tiny models); comparisons within the GPU keep the CPU tests' 1e-5 and exactness.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "serve"))
sys.path.insert(0, str(Path(__file__).parent / "train"))

import serve_support  # noqa: E402
from commands import run_cli  # noqa: E402
from tiny import randomize, tiny_bert, tiny_gpt2, tiny_llama  # noqa: E402
from tinytrain import jsonl_data, model_dir  # noqa: E402, F401  (pytest fixtures, used by name)

import lorakit  # noqa: E402
from lorakit import LoraConfig  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = torch.device("cuda")
CROSS = 1e-4  # CPU vs GPU
SAME = 1e-5  # within the GPU, as on the CPU


@pytest.fixture(autouse=True)
def exact_matmul():
    """No TF32: lorakit's fp32 claims are about fp32 arithmetic."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def logits(model, ids):
    with torch.no_grad():
        return model(ids.to(next(model.parameters()).device)).logits.float().cpu()


MODELS = {
    "llama": (tiny_llama, LoraConfig(rank=4, targets="all-linear")),
    "gpt2": (tiny_gpt2, LoraConfig(rank=4, targets=("c_attn", "c_proj"), slices={"c_attn": (True, False, True)})),
    "bert": (tiny_bert, LoraConfig(rank=2, targets=("query", "value"), modules_to_save=("classifier",))),
}


@pytest.mark.parametrize("kind", MODELS)
def test_an_adapted_model_on_the_gpu_gives_the_cpu_logits_and_zero_b_gives_the_base_exactly(kind, ids):
    make, config = MODELS[kind]
    base = make().to(GPU)
    before = logits(base, ids)
    lorakit.inject(base, config)
    assert torch.equal(logits(base, ids), before)  # B = 0: exactly the base model
    assert all(p.device.type == "cuda" for p in base.parameters())

    cpu = lorakit.inject(make(), config)
    randomize(cpu, seed=3)
    gpu = lorakit.inject(make(), config)
    randomize(gpu, seed=3)
    gpu.to(GPU)
    assert (logits(gpu, ids) - logits(cpu, ids)).abs().max() <= CROSS


@pytest.mark.parametrize("kind", MODELS)
def test_merge_unmerge_and_unwrap_on_the_gpu(kind, ids):
    make, config = MODELS[kind]
    model = make()
    originals = {n: m for n, m in model.named_modules()}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    lorakit.inject(model, config)
    randomize(model, seed=5)  # on the CPU (its generator), then moved
    model.to(GPU)
    unmerged = logits(model, ids)
    lorakit.merge(model, safe=True)
    lorakit.merge(model, safe=True)  # idempotent
    assert (logits(model, ids) - unmerged).abs().max() <= SAME
    lorakit.unmerge(model)
    assert (logits(model, ids) - unmerged).abs().max() <= SAME
    lorakit.merge(model)
    merged = logits(model, ids)
    lorakit.unmerge(model)
    lorakit.unwrap(model)
    for n, m in model.named_modules():
        assert originals[n] is m
    for n, p in model.named_parameters():
        assert p.device.type == "cuda" and (p.cpu() - weights[n]).abs().max() <= 1e-6, n
    assert (merged - unmerged).abs().max() <= SAME


def test_a_mixed_batch_on_the_gpu_equals_each_row_alone_and_generates_the_same():
    model = tiny_llama()
    configs = {"a": LoraConfig(rank=4), "b": LoraConfig(rank=8, alpha=4, targets="all-linear"),
               "c": LoraConfig(rank=2, targets=("o_proj", "embed_tokens"))}
    for i, (name, cfg) in enumerate(configs.items()):
        lorakit.inject(model, cfg, name)
        randomize(model, name, seed=10 + i)
    model.to(GPU)
    choices = ["a", "b", None, "c", "a"]
    ids = torch.randint(3, 128, (len(choices), 9), generator=torch.Generator().manual_seed(7)).to(GPU)
    with torch.no_grad():
        for batch in (ids, ids[:, :4]):  # long rows and short ones take different mixed paths
            with lorakit.adapter_rows(model, choices):
                mixed = model(batch).logits
            for i, name in enumerate(choices):
                lorakit.set_active(model, name)
                assert (mixed[i] - model(batch[i : i + 1]).logits[0]).abs().max() <= SAME, (i, name)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        with lorakit.adapter_rows(model, choices):
            together = model.generate(ids[:, :5], **kw)
        for i, name in enumerate(choices):
            lorakit.set_active(model, name)
            assert torch.equal(together[i], model.generate(ids[i : i + 1, :5], **kw)[0]), (i, name)


def test_adapters_move_between_cpu_and_gpu_models_through_files_bit_exactly(tmp_path, ids):
    config = LoraConfig(rank=4, targets="all-linear")
    gpu = lorakit.inject(tiny_llama().to(GPU), config)
    randomize(gpu.cpu(), seed=9)
    gpu.to(GPU)
    lorakit.save_adapter(gpu, tmp_path / "from-gpu")

    cpu = tiny_llama()
    lorakit.load_adapter(cpu, tmp_path / "from-gpu")
    again = tiny_llama().to(GPU)
    name = lorakit.load_adapter(again, tmp_path / "from-gpu")
    assert all(p.device.type == "cuda" for p in again.parameters())
    state = {k: v for k, v in gpu.state_dict().items() if "lora_" in k}
    for k, v in again.state_dict().items():
        if "lora_" in k:
            assert torch.equal(v.cpu(), state[k.replace(f".{name}", ".default")].cpu()), k
    assert (logits(again, ids) - logits(gpu, ids)).abs().max() == 0
    assert (logits(cpu, ids) - logits(gpu, ids)).abs().max() <= CROSS

    lorakit.save_adapter(cpu, tmp_path / "from-cpu")
    back = lorakit.load_adapter(tiny_llama().to(GPU), tmp_path / "from-cpu")
    assert back == "default"


def test_a_weighted_combination_on_the_gpu_has_the_weighted_sum_of_delta_w():
    model = tiny_llama()
    for i, name in enumerate(("a", "b")):
        lorakit.inject(model, LoraConfig(rank=4, targets=("q_proj", "v_proj")), name)
        randomize(model, name, seed=20 + i)
    model.to(GPU)
    lorakit.combine(model, {"a": 0.7, "b": -0.4}, "ab", rank=8)
    for path, module in model.named_modules():
        if path.endswith("q_proj"):
            want = 0.7 * lorakit.delta_weight(module, "a") - 0.4 * lorakit.delta_weight(module, "b")
            got = lorakit.delta_weight(module, "ab")
            assert got.device.type == "cuda"
            assert (got - want).abs().max() <= 1e-5, path


@pytest.mark.parametrize("method,precision", [("lora", "auto"), ("lora", "fp32"), ("full", "auto"),
                                              ("prompt-tuning", "auto"), ("adapter-h", "auto"),
                                              ("prefix-layer", "auto"), ("dora", "auto")])
def test_lorakit_train_and_eval_run_on_the_gpu(tmp_path, model_dir, jsonl_data, method, precision):  # noqa: F811
    from lorakit.cli import eval as eval_cli
    from lorakit.cli import train as train_cli

    run = tmp_path / "run"
    args = ["--model.name", str(model_dir), "--method", method, "--data.task", "jsonl",
            "--data.train", str(jsonl_data[0]), "--data.dev", str(jsonl_data[1]), "--data.max_length", "32",
            "--train.lr", "5e-3", "--train.steps", "6", "--train.save_every", "3", "--train.eval_every", "3",
            "--train.precision", precision, "--device", "cuda", "--run_dir", str(run), "--no-progress"]
    assert run_cli(train_cli, args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in train)
    out = tmp_path / "eval"
    assert run_cli(eval_cli, ["--run", str(run), "--task", "jsonl", "--max-new-tokens", "3", "--device", "cuda",
                              "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["count"] == 8


def test_eval_in_bf16_and_generate_run_on_the_gpu(tmp_path, model_dir, jsonl_data, capsys):  # noqa: F811
    from lorakit.cli import eval as eval_cli
    from lorakit.cli import generate as generate_cli
    from lorakit.cli import train as train_cli

    run = tmp_path / "run"
    assert run_cli(train_cli, ["--model.name", str(model_dir), "--data.task", "jsonl", "--data.train",
                               str(jsonl_data[0]), "--data.dev", str(jsonl_data[1]), "--data.max_length", "32",
                               "--train.steps", "2", "--device", "cuda", "--run_dir", str(run), "--no-progress"]) == 0
    out = tmp_path / "eval"
    assert run_cli(eval_cli, ["--run", str(run), "--task", "jsonl", "--max-new-tokens", "3", "--device", "cuda",
                              "--precision", "bf16", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["count"] == 8
    capsys.readouterr()
    assert run_cli(generate_cli, ["--run", str(run), "--prompt", "the fox ->", "--prompt", "a pub ->",
                                  "--max-new-tokens", "3", "--beams", "2", "--device", "cuda"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_a_killed_gpu_run_resumes_with_the_same_losses_on_the_gpu_and_on_the_cpu(tmp_path):
    """tests/train/test_loop.py's resume check with the run on the GPU. On the GPU the resumed run repeats the
    uninterrupted one's losses to fp32 noise, dropout included (each step's draws are seeded from the step). On
    the CPU, whose random generator draws other dropout masks from the same seed, they agree without dropout;
    with it, the run resumes and finishes with finite losses."""
    from test_loop import CONFIG, PAD, SimulatedKill, examples, lora_model, train_losses

    from lorakit.train import fit

    train, dev = examples(40), examples(8, 1)
    config = CONFIG.model_copy(update={"device": "cuda"})

    def kill_at_step_8(record):
        if record["split"] == "train" and record["step"] == 8:
            raise SimulatedKill

    for case, (dropout, where, tolerance) in enumerate(((0.1, "cuda", SAME), (0.0, "cpu", CROSS), (0.1, "cpu", None))):
        whole = train_losses(fit(lora_model(dropout), train, config, dev, None, pad_id=PAD, progress=False).records)
        run = tmp_path / f"killed-{case}"
        with pytest.raises(SimulatedKill):
            fit(lora_model(dropout), train, config, dev, run, pad_id=PAD, progress=False, on_log=kill_at_step_8)
        got = train_losses(fit(lora_model(dropout), train, dataclasses.replace(config, device=where), dev, run,
                               pad_id=PAD, progress=False, resume=True, export=None).records)
        assert sorted(got) == list(range(1, 13))
        assert all(math.isfinite(loss) for loss in got.values())
        for step in range(7, 13) if tolerance is not None else ():
            assert abs(got[step] - whole[step]) <= tolerance, (dropout, where, step, got[step], whole[step])


def test_the_engine_on_the_gpu_gives_each_request_its_solo_output_in_a_mixed_batch(tmp_path):
    from lorakit.serve.engine import Engine
    from lorakit.serve.pool import AdapterPool
    from lorakit.serve.sampling import SamplingParams

    adapters = serve_support.make_adapters(tmp_path / "adapters")
    model = serve_support.tiny_model().to(GPU)
    pool = AdapterPool(model, tmp_path / "adapters")
    for name, path in adapters.items():
        pool.add(name, path)
    engine = Engine(model, serve_support.tiny_tokenizer(), pool)
    assert engine.backend.name == "transformers"  # the lean forward is the CPU's

    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    jobs = [("SELECT name FROM", "sql"), ("name[The Eagle]", "e2e"), ("hi", None), ("a longer prompt", "chat"),
            ("x", "sql")]

    def run(batch):
        outs = []
        for prompt, adapter in batch:
            events = []
            outs.append(events)
            engine.submit(engine.tokenizer.encode(prompt), adapter, greedy, events.append)
        engine.run_until_idle()
        return [[t for e in ev for t in e.token_ids] for ev in outs]

    alone = [run([job])[0] for job in jobs]
    assert run(jobs) == alone
    assert len({tuple(a) for a in alone}) > 1


def test_lorakit_serve_on_the_gpu_answers_the_openai_client(tmp_path):
    from openai import NotFoundError, OpenAI

    from lorakit.serve.app import create_app
    from lorakit.serve.engine import Engine
    from lorakit.serve.pool import AdapterPool
    from lorakit.serve.service import Service

    root = tmp_path / "adapters"
    adapters = serve_support.make_adapters(root)
    model = serve_support.tiny_model().to(GPU)
    pool = AdapterPool(model, root)
    pool.add("sql", adapters["sql"], trusted=True)
    engine = Engine(model, serve_support.tiny_tokenizer(), pool)
    with serve_support.running_server(create_app(Service(engine, "tiny"), None)) as url:
        client = OpenAI(base_url=url + "/v1", api_key="none")
        assert {m.id for m in client.models.list().data} == {"tiny", "sql"}
        done = client.completions.create(model="sql", prompt="SELECT", max_tokens=5, temperature=0)
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="sql", prompt="SELECT", max_tokens=5, temperature=0, stream=True))
        assert done.choices[0].text == streamed and done.usage.completion_tokens == 5
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4, temperature=0)
        assert chat.choices[0].message.content is not None
        client.post("/load_lora_adapter", body={"lora_name": "e2e", "lora_path": str(adapters["e2e"])}, cast_to=object)
        assert "e2e" in {m.id for m in client.models.list().data}
        with pytest.raises(NotFoundError, match="sql"):
            client.completions.create(model="nope", prompt="x", max_tokens=2)
