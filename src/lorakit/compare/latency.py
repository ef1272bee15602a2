"""Inference latency in the style of the paper's Table 1: forward time over a grid of batch size x sequence
length for the base model, LoRA merged and unmerged, and each adapter/prefix method, with the added percentage.

All variants are timed in one process, interleaved per repetition (base, lora, adapter-h, base, ...), so drift
in clock speed or machine load hits them alike; the median of the repetitions is reported.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lorakit.core.inject import inject, unwrap
from lorakit.core.merge import merge

Variant = Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class Cell:
    batch: int
    length: int
    seconds: dict[str, float]
    """Median forward seconds per variant."""

    def overhead(self, variant: str, baseline: str = "base") -> float:
        """Added latency in percent over the baseline."""
        return 100.0 * (self.seconds[variant] / self.seconds[baseline] - 1.0)


def lora_variants(lora_config) -> dict[str, Variant]:
    """LoRA unmerged (an extra low-rank path per adapted layer) and merged into W and unwrapped (no extra work)."""

    def unmerged(model: nn.Module) -> nn.Module:
        inject(model, lora_config, "default")
        return model

    def merged(model: nn.Module) -> nn.Module:
        inject(model, lora_config, "default")
        merge(model, "default")
        return unwrap(model)

    return {"lora (merged)": merged, "lora (unmerged)": unmerged}


def measure(base: nn.Module, variants: dict[str, Variant], batches: tuple[int, ...], lengths: tuple[int, ...],
            repeats: int, device: torch.device, vocab: int | None = None) -> list[Cell]:
    """Median forward latency of each variant (and 'base') at each (batch, length), interleaved."""
    models = {"base": copy.deepcopy(base)}
    for name, make in variants.items():
        models[name] = make(copy.deepcopy(base))
    for m in models.values():
        m.to(device).eval()
    vocab = vocab or base.get_input_embeddings().weight.shape[0]
    cells = []
    g = torch.Generator().manual_seed(0)
    for batch in batches:
        for length in lengths:
            ids = torch.randint(0, vocab, (batch, length), generator=g).to(device)
            mask = torch.ones_like(ids)
            times: dict[str, list[float]] = {name: [] for name in models}
            with torch.inference_mode():
                for m in models.values():  # warm-up: allocator, kernels, caches
                    m(input_ids=ids, attention_mask=mask)
                for _ in range(repeats):
                    for name, m in models.items():
                        times[name].append(_timed(m, ids, mask, device))
            cells.append(Cell(batch, length, {n: statistics.median(t) for n, t in times.items()}))
    return cells


def _timed(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model(input_ids=ids, attention_mask=mask)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
