"""LoRA around nn.Conv2d."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.errors import ConfigError
from lorakit.core.layers.common import DeltaBlock, forward_generic, init_slots, put_adapter, remove_adapter
from lorakit.core.state import AdapterState, register_wrapper


@register_wrapper
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

    def delta_parts(self, name: str) -> list[DeltaBlock]:
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
