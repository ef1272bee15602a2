"""RoPE's cos and sin tables for the lean forward (llama.py), in the form kernels.rope_cache takes them."""

from __future__ import annotations

import torch
from torch import nn

BLOCK = 256  # positions per block of the table (256 x 64 values: one thread computes a block)


class RopeTable:
    """The (cos, signed sin) tables of a model's rotary embedding, (positions, D) bf16, grown in blocks of BLOCK."""

    def __init__(self, rotary: nn.Module, head_dim: int):
        self.rotary = rotary
        self.cos = self.sin = torch.empty(0, head_dim, dtype=torch.bfloat16)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, signed sin) tables, (positions, D) bf16, grown to cover `positions`; signed sin has its first
        half negated, as kernels.rope_cache takes it.

        Computed in float64 and rounded to bf16, within an ulp of the model's own values: the model's rotary
        embedding computes them in fp32 on every call, and fp32 tables were seen to differ by one bf16 step
        between a process's first forward and later ones (tests/serve/test_lean_smollm2.py checks fresh
        processes). A block's values do not depend on how many blocks the table has, so a position's cos and sin
        never change while a forward lives."""
        top = int(positions.max()) + 1
        if top > self.cos.shape[0]:
            inv_freq = self.rotary.inv_freq.double()
            scale = float(getattr(self.rotary, "attention_scaling", 1.0))
            cos, sin = [self.cos], [self.sin]
            end = -(-max(top, 2 * self.cos.shape[0]) // BLOCK) * BLOCK
            for start in range(self.cos.shape[0], end, BLOCK):
                freqs = torch.arange(start, start + BLOCK).double()[:, None] * inv_freq[None, :]
                emb = torch.cat((freqs, freqs), dim=-1)
                cos.append((emb.cos() * scale).to(torch.bfloat16))
                sin.append(_signed((emb.sin() * scale).to(torch.bfloat16)))
            self.cos, self.sin = torch.cat(cos), torch.cat(sin)
        return self.cos, self.sin


def _signed(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated: rotate_half(x)·sin is then roll(x, D/2)·signed_sin, as (-a)·b = a·(-b)
    exactly (kernels.rope_cache)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
