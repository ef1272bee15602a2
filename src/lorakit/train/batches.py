"""Which examples each step trains on, as a pure function of (seed, step): what makes resume exact."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorakit.data import Example, collate


class BatchOrder:
    """Global batches: each epoch is a fresh permutation (seeded by seed + epoch) cut into consecutive batches.

    An epoch's last partial batch is dropped so that every step sees exactly batch_size examples.
    """

    def __init__(self, n_examples: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self.steps_per_epoch = n_examples // batch_size
        self._epoch, self._order = -1, []

    def indices(self, step: int) -> list[int]:
        """The example indices of step `step`'s global batch."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=generator).tolist()
        return self._order[offset * self.batch_size: (offset + 1) * self.batch_size]

    def position(self, step: int) -> dict[str, int]:
        """Where the data stands before step `step`: epoch, batch within it, examples seen so far."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "batch_in_epoch": offset, "examples_seen": step * self.batch_size}


def micro_batches(
    examples: Sequence[Example], indices: list[int], rank: int, world: int, accum: int, pad_id: int
) -> list[dict[str, torch.Tensor]]:
    """This process's share of a global batch, as `accum` padded micro-batches.

    Process r takes the r-th contiguous slice, so N processes with accumulation a see the same micro-batches as
    one process with accumulation N·a: the runs compute the same sums.
    """
    share = len(indices) // world
    mine = indices[rank * share: (rank + 1) * share]
    micro = share // accum
    return [collate([examples[i] for i in mine[k * micro: (k + 1) * micro]], pad_id) for k in range(accum)]


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed for one step on one process: dropout masks are then a function of (seed, step, rank)."""
    return (seed * 1_000_003 + step) * 1_009 + rank
