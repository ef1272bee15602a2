"""How much ΔW amplifies directions of W (Hu et al., 2021, section 7.3, Table 7).

Project W onto the r-dimensional subspace of ΔW: U (out x r) and V (r x in) are the top-r left- and
right-singular vectors of ΔW, and

    amplification = ‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F.

A large factor means ΔW strengthens directions that W barely uses. For contrast the same projection is taken on
W's own top-r singular directions (= the root of its top r squared singular values) and on random orthonormal
directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Amplification:
    """One row of Table 7 for one weight matrix (all Frobenius norms)."""

    rank: int
    delta_norm: float
    """‖ΔW‖_F."""
    weight_norm: float
    """‖W‖_F."""
    on_delta: float
    """‖Uᵀ W Vᵀ‖_F with U, V the top-r singular vectors of ΔW."""
    on_weight: float
    """The same with W's own top-r singular vectors."""
    on_random: float
    """The same with random orthonormal U, V."""

    @property
    def factor(self) -> float:
        """‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F (infinite when ΔW's directions are absent from W)."""
        return self.delta_norm / self.on_delta if self.on_delta > 0 else float("inf")


Svd = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def projected_norm(w: torch.Tensor, u: torch.Tensor, vh: torch.Tensor) -> float:
    """‖Uᵀ W Vᵀ‖_F for U (out x r), Vᵀ given as Vh (r x in)."""
    return float(torch.linalg.matrix_norm(u.T @ w @ vh.T))


def amplification(delta: torch.Tensor, weight: torch.Tensor, rank: int | None = None, seed: int = 0,
                  delta_svd: Svd | None = None, weight_svd: Svd | None = None) -> Amplification:
    """Table 7's numbers for one (out x in) W and ΔW; rank defaults to ΔW's numerical rank.

    Pass float64 SVDs already computed (torch.linalg.svd(..., full_matrices=False)) to avoid recomputing them:
    they dominate the cost on a real model."""
    d, w = delta.detach().double(), weight.detach().double()
    if d.shape != w.shape:
        raise ValueError(f"ΔW {tuple(d.shape)} and W {tuple(w.shape)} must have the same shape")
    u, s, vh = delta_svd if delta_svd is not None else torch.linalg.svd(d, full_matrices=False)
    if rank is None:
        rank = max(1, int((s > s[0] * 1e-6).sum())) if s[0] > 0 else 1
    uw, _, vhw = weight_svd if weight_svd is not None else torch.linalg.svd(w, full_matrices=False)
    g = torch.Generator().manual_seed(seed)
    ur, _ = torch.linalg.qr(torch.randn(w.shape[0], rank, generator=g, dtype=w.dtype))
    vr, _ = torch.linalg.qr(torch.randn(w.shape[1], rank, generator=g, dtype=w.dtype))
    return Amplification(
        rank=rank,
        delta_norm=float(torch.linalg.matrix_norm(d)),
        weight_norm=float(torch.linalg.matrix_norm(w)),
        on_delta=projected_norm(w, u[:, :rank], vh[:rank]),
        on_weight=projected_norm(w, uw[:, :rank], vhw[:rank]),
        on_random=projected_norm(w, ur, vr.T),
    )
