"""LoRA around nn.Embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.errors import ConfigError
from lorakit.core.layers.common import DeltaBlock, forward_generic, init_slots, put_adapter, remove_adapter
from lorakit.core.state import AdapterState, register_wrapper


@register_wrapper
class LoraEmbedding(nn.Module):
    """Embedding W (num x dim) + s·(B·A)ᵀ with A (r x num) zero-initialized and B (dim x r) Gaussian.

    The initialization is reversed from Linear (as in loralib/PEFT): A's rows are looked up by token id, so a
    zero A keeps ΔW = 0 while B carries the random directions.
    """

    def __init__(self, base_layer: nn.Embedding, state: AdapterState):
        super().__init__()
        self.base_layer = base_layer
        init_slots(self, state)

    def add_adapter(self, name: str, rank: int, scaling: float, dropout: float, init: str) -> None:
        if init == "pissa":
            raise ConfigError("init='pissa' needs a Linear or Conv1D weight; leave embeddings out of the targets")
        w = self.base_layer.weight
        a = torch.zeros(rank, w.shape[0], dtype=w.dtype, device=w.device)
        put_adapter(self, name, a, torch.randn(w.shape[1], rank, dtype=w.dtype, device=w.device), scaling, dropout)

    def remove_adapter(self, name: str) -> None:
        remove_adapter(self, name)

    def weight_2d(self) -> torch.Tensor:
        return self.base_layer.weight.data

    def delta_parts(self, name: str) -> list[DeltaBlock]:
        # W is (num x dim) and ΔW = (B·A)ᵀ = Aᵀ·Bᵀ.
        return [((slice(None), slice(None)), self.lora_A[name].t(), self.lora_B[name].t())]

    def lora_out(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        e = self.base_layer
        a, b = self.lora_A[name], self.lora_B[name]
        t = F.embedding(ids, a.t(), e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)
        return (t @ b.t()) * self.scaling[name]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return forward_generic(self, ids)
