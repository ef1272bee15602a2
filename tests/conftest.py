"""Shared fixtures; the tiny model builders live in tests/tiny.py (this folder is on sys.path)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(3, 128, (3, 9), generator=torch.Generator().manual_seed(7))
