"""Trainable-parameter counts: the paper's formulas (Hu et al., 2021, section 5.1) and the count of a model."""

from __future__ import annotations

from torch import nn


def adapter_count(hidden: int, bottleneck: int, adapter_layers: int, layer_norms: int) -> int:
    """|Θ| = L̂_adpt·(2·d·r + r + d) + 2·L̂_LN·d: each adapter is d->r->d with biases, each LayerNorm has 2·d.

    Adapter^H has L̂_adpt = 2L; Adapter^L has L̂_adpt = L̂_LN = L (GPT-2 Medium, r=6: 368,784 = 0.369M).
    """
    return adapter_layers * (2 * hidden * bottleneck + bottleneck + hidden) + 2 * layer_norms * hidden


def prefix_embed_count(hidden: int, prefix_length: int, infix_length: int = 0) -> int:
    """PreEmbed: |Θ| = d·(l_p + l_i)."""
    return hidden * (prefix_length + infix_length)


def prefix_layer_count(layers: int, hidden: int, prefix_length: int, infix_length: int = 0) -> int:
    """PreLayer: |Θ| = L·d·(l_p + l_i)."""
    return layers * hidden * (prefix_length + infix_length)


def lora_count(hidden: int, rank: int, matrices: int) -> int:
    """LoRA on L̂_lora square (d x d) matrices: |Θ| = 2·L̂_lora·d·r."""
    return 2 * matrices * hidden * rank


def trainable_count(model: nn.Module) -> int:
    """Parameters with requires_grad, each counted once (tied weights share storage)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
