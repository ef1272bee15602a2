"""Bottleneck adapters (Hu et al., 2021, section 5.1): Adapter^H (Houlsby et al., 2019) and Adapter^L
(Lin et al., 2020).

An adapter maps the output h (B, T, d) of a projection that feeds the residual stream to

    h + W_up · act(W_down · norm(h) + b_down) + b_up,   W_down (r x d), W_up (d x r),

with W_up and b_up zero at the start, so an adapted model computes exactly the base model's output until it
trains. |Θ| per adapter = 2·d·r + r + d, plus 2·d for a LayerNorm.

- adapter-h: one adapter after the attention output projection and one after the MLP output projection of every
  block (before the residual add); the blocks' own norms train as well, as in Houlsby et al.
- adapter-l: one adapter after the MLP output projection of every block, with its own LayerNorm before it.

Adapters sit on forward hooks of the projections, so the base model's modules and parameter names stay as they
were; the adapter is the projection's child `lorakit_adapter`. They add sequential work that cannot be merged
away, which is the inference latency the paper measures (Table 1).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.core.errors import ConfigError
from lorakit.methods.blocks import attention_output, blocks, hidden_size, mlp_output, norms, train_head
from lorakit.methods.export import Export, trained_export
from lorakit.methods.options import MethodOptions

Design = Literal["houlsby", "lin"]
ATTRIBUTE = "lorakit_adapter"


class Bottleneck(nn.Module):
    """h -> h + up(relu(down(norm(h)))) over the last dimension; zero `up`, so it starts as the identity."""

    def __init__(self, hidden: int, bottleneck: int, layer_norm: bool, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm = nn.LayerNorm(hidden, **kw) if layer_norm else nn.Identity()
        self.down = nn.Linear(hidden, bottleneck, **kw)
        self.up = nn.Linear(bottleneck, hidden, **kw)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(torch.relu(self.down(self.norm(h))))


def _run_adapter(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return getattr(module, ATTRIBUTE)(output)


def insert_adapters(model: nn.Module, design: Design, bottleneck: int) -> list[Bottleneck]:
    """Add adapters to every block of `model` in place (no parameter changes requires_grad); returns them."""
    added = []
    d = hidden_size(model)
    for block in blocks(model):
        places = [mlp_output(block)] if design == "lin" else [attention_output(block), mlp_output(block)]
        for proj in places:
            if hasattr(proj, ATTRIBUTE):
                raise ConfigError("this model already has adapters; load a fresh model to add them again")
            w = next(proj.parameters())
            adapter = Bottleneck(d, bottleneck, layer_norm=design == "lin", device=w.device, dtype=w.dtype)
            proj.add_module(ATTRIBUTE, adapter)
            proj.register_forward_hook(_run_adapter)
            added.append(adapter)
    return added


def adapter_h(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
    """Adapter^H: two adapters per block plus the blocks' norms train (L̂_adpt = 2L, L̂_LN = the block norms)."""
    model.requires_grad_(False)
    block_norms = [norm for block in blocks(model) for norm in norms(block)]  # before adapters add modules
    for adapter in insert_adapters(model, "houlsby", options.bottleneck):
        adapter.requires_grad_(True)
    for norm in block_norms:
        norm.requires_grad_(True)
    train_head(model)
    return trained_export("adapter-h", lora, options)


def adapter_l(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
    """Adapter^L: one adapter with its own LayerNorm per block, after the MLP (L̂_adpt = L̂_LN = L)."""
    model.requires_grad_(False)
    for adapter in insert_adapters(model, "lin", options.bottleneck):
        adapter.requires_grad_(True)
    train_head(model)
    return trained_export("adapter-l", lora, options)

