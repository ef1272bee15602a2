"""Singular-value spectra and effective rank of weight updates ΔW."""

from __future__ import annotations

import math

import torch


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """σ_1 >= σ_2 >= ... of a 2-D tensor, in float64."""
    return torch.linalg.svdvals(matrix.detach().double())


def effective_rank(matrix: torch.Tensor) -> float:
    """exp(H(p)) with p_k = σ_k / Σσ (Roy & Vetterli, 2007): k for k equal singular values, 1 for rank one, 0 for
    the zero matrix."""
    return effective_rank_of(singular_values(matrix))


def effective_rank_of(s: torch.Tensor) -> float:
    """effective_rank from given singular values (an SVD is the expensive part; compute it once)."""
    total = float(s.sum())
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def energy_rank(matrix: torch.Tensor, fraction: float = 0.9) -> int:
    """The fewest singular directions holding `fraction` of ‖ΔW‖²_F."""
    return energy_rank_of(singular_values(matrix), fraction)


def energy_rank_of(s: torch.Tensor, fraction: float = 0.9) -> int:
    """energy_rank from given singular values."""
    s2 = s.double() ** 2
    if float(s2.sum()) == 0:
        return 0
    return int((s2.cumsum(0) / s2.sum() < fraction - 1e-12).sum()) + 1
