"""Subspace similarity between two adapters (Hu et al., 2021, section 7.2, eq. 4).

    φ(A1, A2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F / min(i, j)  ∈ [0, 1]

with U the right-singular vectors (columns, by decreasing singular value) of an adapter's A (r x in). φ = 1 when
the span of one set contains the other; 0 when they are orthogonal.
"""

from __future__ import annotations

import torch


def right_singular_vectors(a: torch.Tensor) -> torch.Tensor:
    """(in x r) orthonormal columns: the right-singular vectors of A (r x in), largest singular value first."""
    _, _, vh = torch.linalg.svd(a.detach().double(), full_matrices=False)
    return vh.T


def similarity(a1: torch.Tensor, a2: torch.Tensor, i: int, j: int) -> float:
    """φ(A1, A2, i, j) for 1 <= i <= rank(A1) and 1 <= j <= rank(A2)."""
    return float(similarity_grid(a1, a2)[i - 1, j - 1])


def similarity_grid(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """φ for every (i, j): a (r1 x r2) tensor whose [i-1, j-1] entry is φ(A1, A2, i, j).

    With M = U1ᵀ U2 (r1 x r2), ‖U1[:, :i]ᵀ U2[:, :j]‖²_F is the sum of M² over the top-left i x j block, which
    cumulative sums give for all blocks at once.
    """
    if a1.shape[-1] != a2.shape[-1]:
        raise ValueError(f"A matrices must share their input width to compare subspaces (got {a1.shape[-1]} and "
                         f"{a2.shape[-1]}); compare adapters of the same module of the same base model")
    m = right_singular_vectors(a1).T @ right_singular_vectors(a2)  # (r1, r2)
    blocks = (m ** 2).cumsum(0).cumsum(1)
    i = torch.arange(1, m.shape[0] + 1, dtype=m.dtype)[:, None]
    j = torch.arange(1, m.shape[1] + 1, dtype=m.dtype)[None, :]
    return (blocks / torch.minimum(i, j)).float()
