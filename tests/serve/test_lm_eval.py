"""A client nobody here wrote: EleutherAI's lm-evaluation-harness scores an adapter through the server with its
`local-completions` model, on a loglikelihood task (echo + logprobs) and a generate_until task, both local YAML
tasks over local files. Its numbers must be the model's own: log-likelihoods and greedy texts computed here
directly from the adapter on the model."""

from __future__ import annotations

import json

import pytest
import torch
from serve_support import CONTEXT, tiny_model, tiny_server, tiny_tokenizer

import lorakit

lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval test needs `pip install 'lm-eval[api]'` (test extra)")
pytest.importorskip("tenacity", reason="lm-eval's API models need its `api` extra: pip install 'lm-eval[api]'")
pytestmark = pytest.mark.slow

QUESTIONS = [{"q": f"item {i} is", "choices": ["red", "a cat", "9"], "label": i % 3} for i in range(4)]
PROMPTS = [{"q": f"say {w}:", "a": w} for w in ("yes", "no", "ok")]
MAX_GEN = 6


def write_tasks(root) -> None:
    (root / "mc.jsonl").write_text("\n".join(json.dumps(q) for q in QUESTIONS))
    (root / "gen.jsonl").write_text("\n".join(json.dumps(p) for p in PROMPTS))
    common = "dataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n    test: {}\n"
    (root / "mc.yaml").write_text(
        "task: lorakit_mc\n" + common.format(root / "mc.jsonl") +
        'output_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (root / "gen.yaml").write_text(
        "task: lorakit_gen\n" + common.format(root / "gen.jsonl") +
        'output_type: generate_until\ndoc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\n'
        f'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: {MAX_GEN}\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")


def adapted(path) -> torch.nn.Module:
    model = tiny_model()
    lorakit.load_adapter(model, path)
    return model


def loglikelihood(model, context: str, continuation: str) -> float:
    tok = tiny_tokenizer()
    ctx, cont = tok.encode(context), tok.encode(continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))


def greedy(model, prompt: str) -> str:
    tok = tiny_tokenizer()
    ids = tok.encode(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(MAX_GEN):
            token = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if token == tok.eos_token_id:
                break
            out.append(token)
    return tok.decode(out, skip_special_tokens=True).split("\n")[0]


def test_lm_eval_scores_an_adapter_through_the_server_as_the_model_itself_would(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")  # lm-eval tokenizes locally: no hub
    write_tasks(tmp_path)
    with tiny_server(tmp_path / "adapters") as served:
        args = {"model": "sql", "base_url": served.url + "/v1/completions", "tokenizer_backend": "huggingface",
                "tokenizer": str(tmp_path / "tokenizer"), "tokenized_requests": True, "max_length": CONTEXT,
                "max_retries": 1}
        out = lm_eval.simple_evaluate(model="local-completions", model_args=args,
                                      tasks=["lorakit_mc", "lorakit_gen"], log_samples=True,
                                      task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
        model = adapted(served.adapters["sql"])
    right = 0
    for sample in sorted(out["samples"]["lorakit_mc"], key=lambda s: s["doc_id"]):
        doc = QUESTIONS[sample["doc_id"]]
        expected = [loglikelihood(model, doc["q"], " " + c) for c in doc["choices"]]
        got = [resp[0][0] for resp in sample["resps"]]
        assert got == pytest.approx(expected, abs=1e-3)
        right += max(range(3), key=lambda i: expected[i]) == doc["label"]
    assert out["results"]["lorakit_mc"]["acc,none"] == right / len(QUESTIONS)
    for sample in out["samples"]["lorakit_gen"]:
        assert sample["resps"][0][0] == greedy(model, PROMPTS[sample["doc_id"]]["q"])
