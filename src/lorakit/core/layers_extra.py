"""LoRA around nn.Embedding and nn.Conv2d, and the wrapper that trains a full copy (modules_to_save)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.errors import ConfigError
from lorakit.core.layers import Part, forward_generic, init_slots, put_adapter, remove_adapter, row_ids_for
from lorakit.core.state import AdapterState


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

    def delta_parts(self, name: str) -> list[Part]:
        # W is (num x dim) and ΔW = (B·A)ᵀ = Aᵀ·Bᵀ.
        return [((slice(None), slice(None)), self.lora_A[name].t(), self.lora_B[name].t())]

    def lora_out(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        e = self.base_layer
        a, b = self.lora_A[name], self.lora_B[name]
        t = F.embedding(ids, a.t(), e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)
        return (t @ b.t()) * self.scaling[name]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return forward_generic(self, ids)


class LoraConv2d(nn.Module):
    """Conv2d W (out x in x kh x kw) + s·B·A with A a conv like W's (r x in x kh x kw) and B a 1x1 conv (out x r)."""

    def __init__(self, base_layer: nn.Conv2d, state: AdapterState):
        super().__init__()
        if base_layer.groups != 1:
            raise ConfigError(f"LoRA on grouped convolutions (groups={base_layer.groups}) is not supported")
        self.base_layer = base_layer
        init_slots(self, state)

    def add_adapter(self, name: str, rank: int, scaling: float, dropout: float, init: str) -> None:
        if init == "pissa":
            raise ConfigError("init='pissa' needs a Linear or Conv1D weight; leave Conv2d out of the targets")
        w = self.base_layer.weight
        a = torch.empty(rank, *w.shape[1:], dtype=w.dtype, device=w.device)
        if init == "gaussian":
            nn.init.normal_(a, std=1 / rank)
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        b = torch.zeros(w.shape[0], rank, 1, 1, dtype=w.dtype, device=w.device)
        put_adapter(self, name, a, b, scaling, dropout)

    def remove_adapter(self, name: str) -> None:
        remove_adapter(self, name)

    def weight_2d(self) -> torch.Tensor:
        w = self.base_layer.weight.data
        return w.view(w.shape[0], -1)

    def delta_parts(self, name: str) -> list[Part]:
        a, b = self.lora_A[name], self.lora_B[name]
        return [((slice(None), slice(None)), b.flatten(1), a.flatten(1))]

    def lora_out(self, x: torch.Tensor, name: str) -> torch.Tensor:
        c = self.base_layer
        if self.dropout[name] and self.training:
            x = F.dropout(x, self.dropout[name], training=True)
        t = F.conv2d(x, self.lora_A[name], None, c.stride, c.padding, c.dilation)
        return F.conv2d(t, self.lora_B[name]) * self.scaling[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_generic(self, x)


class SavedModule(nn.Module):
    """A module trained in full per adapter (e.g. a classifier head): the original stays untouched for the base."""

    def __init__(self, original_module: nn.Module, state: AdapterState):
        super().__init__()
        self.original_module = original_module
        self.copies = nn.ModuleDict()
        object.__setattr__(self, "state", state)

    def add_copy(self, name: str) -> None:
        c = copy.deepcopy(self.original_module)
        for p in c.parameters():
            p.requires_grad_(True)
        self.copies[name] = c

    def remove_adapter(self, name: str) -> None:
        if name in self.copies:
            del self.copies[name]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        st = self.state
        if st.rows is not None and not st.disabled and len(self.copies):
            rows = row_ids_for(st, x.shape[0])
            out = self.original_module(x, *args, **kwargs)
            for idx in rows.unique().tolist():
                name = st.names[idx - 1] if idx else None
                if name in self.copies:
                    sel = (rows == idx).nonzero().squeeze(1)
                    out = out.index_copy(0, sel, self.copies[name](x[sel], *args, **kwargs).to(out.dtype))
            return out
        name = None if st.disabled else st.active
        module = self.copies[name] if name in self.copies else self.original_module
        return module(x, *args, **kwargs)
