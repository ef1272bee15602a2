"""φ, the amplification factor and effective rank on constructed matrices with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from lorakit.analysis import amplification, effective_rank, energy_rank, similarity, similarity_grid


def rows(*indices: int, width: int = 10, scale: tuple[float, ...] | None = None) -> torch.Tensor:
    """A whose rows are (scaled) standard basis vectors e_k, so its right-singular vectors are known."""
    a = torch.zeros(len(indices), width, dtype=torch.float64)
    for r, k in enumerate(indices):
        a[r, k] = 1.0 if scale is None else scale[r]
    return a


def test_identical_subspaces_have_similarity_one():
    a = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(similarity_grid(a, a).diagonal(), torch.ones(4))


def test_orthogonal_subspaces_have_similarity_zero():
    assert similarity(rows(0, 1), rows(2, 3, 4), 2, 3) == 0.0


def test_similarity_counts_the_shared_directions_over_min_i_j():
    # A1 spans e0 (strongest), e1; A2 spans e0, e5, e6 (e0 strongest). Top-1 of each is e0: φ(1,1) = 1.
    a1 = rows(0, 1, scale=(3.0, 1.0))
    a2 = rows(0, 5, 6, scale=(3.0, 2.0, 1.0))
    grid = similarity_grid(a1, a2)
    assert grid[0, 0] == pytest.approx(1.0)
    assert grid[1, 2] == pytest.approx(1 / 2)  # one shared direction out of min(2, 3)
    assert grid[1, 0] == pytest.approx(1.0)  # e0 lies in span(e0, e1)


def test_rank_8_inside_rank_64_has_similarity_one_on_the_top_directions():
    g = torch.Generator().manual_seed(1)
    big = torch.randn(64, 128, generator=g, dtype=torch.float64)
    small = big[:8] * torch.linspace(10, 9, 8, dtype=torch.float64)[:, None]
    assert similarity(small, big, 8, 64) == pytest.approx(1.0)


def test_amplification_of_a_direction_w_barely_uses():
    w = torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.5], dtype=torch.float64))
    delta = torch.zeros(4, 4, dtype=torch.float64)
    delta[2, 2] = 4.0  # amplifies W's third direction (singular value 1) by 4
    result = amplification(delta, w, rank=1)
    assert result.on_delta == pytest.approx(1.0)
    assert result.factor == pytest.approx(4.0)
    assert result.on_weight == pytest.approx(10.0)  # W's own top direction
    assert result.delta_norm == pytest.approx(4.0)
    assert result.weight_norm == pytest.approx(math.sqrt(100 + 25 + 1 + 0.25))


def test_w_own_top_directions_bound_every_projection():
    # Ky Fan: no r-dimensional pair of subspaces captures more of W than its own top-r singular directions.
    g = torch.Generator().manual_seed(2)
    w = torch.randn(30, 20, generator=g, dtype=torch.float64)
    delta = torch.randn(30, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 20, generator=g, dtype=torch.float64)
    result = amplification(delta, w)
    assert result.rank == 3
    assert result.on_random < result.on_weight
    assert result.on_delta < result.on_weight
    assert result.on_weight == pytest.approx(float(torch.linalg.svdvals(w)[:3].square().sum().sqrt()))


def test_effective_rank_of_k_equal_singular_values_is_k():
    assert effective_rank(torch.diag(torch.tensor([2.0, 2.0, 2.0, 0.0]))) == pytest.approx(3.0)
    assert effective_rank(torch.outer(torch.ones(5), torch.arange(5.0))) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(3, 3)) == 0.0


def test_energy_rank_is_the_fewest_directions_holding_the_fraction():
    m = torch.diag(torch.tensor([3.0, 1.0, 1.0, 0.1]))
    assert energy_rank(m, 0.8) == 1  # 9 / 11.01 > 0.8
    assert energy_rank(m, 0.95) == 3
