"""Keeping frozen weights in bf16 during bf16-autocast training (TrainConfig.frozen_bf16)."""

from __future__ import annotations

import torch
from torch import nn


def frozen_linears_to(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the weight and bias of every Linear layer that does not train to `dtype`, in place; returns how many
    layers changed.

    Under autocast to the same dtype each matmul sees identical operands, so training is unchanged while the
    frozen weights take half the memory and autocast stops re-casting them (and keeping the copies for backward)
    every step. Weights shared with an Embedding (a tied output head) are left alone: the embedding lookup is not
    autocast, so casting it would change the residual stream.
    """
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    changed = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear) or module.weight.requires_grad or id(module.weight) in tied:
            continue
        if module.weight.dtype != dtype:
            module.weight.data = module.weight.data.to(dtype)
            changed += 1
        if module.bias is not None and not module.bias.requires_grad:
            module.bias.data = module.bias.data.to(dtype)
    return changed
