"""Which examples each step trains on, as a pure function of (seed, step): what makes resume exact."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from lorakit.core.errors import ConfigError
from lorakit.data import Example, collate, model_inputs
from lorakit.data.tokenize import collate_packed

logger = logging.getLogger(__name__)


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
    examples: Sequence[Example], indices: list[int], rank: int, world: int, accum: int, pad_id: int,
    packed: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """This process's share of a global batch, as `accum` micro-batches, padded or packed (see `batcher`).

    Process r takes the r-th contiguous slice, so N processes with accumulation a see the same micro-batches as
    one process with accumulation N·a: the runs compute the same sums.
    """
    share = len(indices) // world
    mine = indices[rank * share: (rank + 1) * share]
    micro = share // accum
    return [batcher(packed, pad_id)([examples[i] for i in mine[k * micro: (k + 1) * micro]]) for k in range(accum)]


def batcher(packed: bool, pad_id: int):
    """The collate function: packed rows (data.tokenize.collate_packed) or a padded batch."""
    return (lambda rows: collate_packed(rows, pad_id=pad_id)) if packed else (lambda rows: collate(rows, pad_id))


def token_count(batch: dict[str, torch.Tensor]) -> int:
    """The real (non-padding) input tokens of a padded batch (its attention mask) or a packed one (its count)."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["tokens"])


def use_packing(model: nn.Module, examples: Sequence[Example], batching: str) -> bool:
    """Whether to pack batches: "padded" never; "packed" always (refused where it would be wrong); "auto" where
    the examples are token-labelled and the model honours packed position ids (`packs_correctly`)."""
    if batching == "padded":
        return False
    generation = all(len(e.labels) == len(e.input_ids) for e in examples[:64])
    if not generation:
        if batching == "packed":
            raise ConfigError("train.batching packed needs generation examples (one label per token); "
                              "classification batches are padded: set train.batching to padded or auto")
        return False
    if packs_correctly(model, examples):
        return True
    message = (f"{type(model).__name__} (with this method) does not keep packed examples apart: its logits for two "
               "examples packed into one row differ from their separate runs (it ignores position ids or prepends "
               "positions of its own)")
    if batching == "packed":
        raise ConfigError(message + "; set train.batching to padded or auto")
    logger.info("%s, so batches are padded", message)
    return False


def packs_correctly(model: nn.Module, examples: Sequence[Example], probe_tokens: int = 12) -> bool:
    """Whether the model's logits for two examples packed into one row equal their logits run one by one, checked on
    the first probe_tokens tokens of two examples in eval mode (a few milliseconds)."""
    rows = sorted((Example(e.input_ids[:probe_tokens], e.labels[:probe_tokens]) for e in examples[:2]),
                  key=lambda e: -len(e.input_ids))  # the order collate_packed puts them in
    if len(rows) < 2:
        return True  # one example per batch: nothing to keep apart
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(**model_inputs(collate_packed(rows), device)).logits[0].float()
            alone = torch.cat([model(**model_inputs(collate_packed([r]), device)).logits[0].float() for r in rows])
    except (TypeError, ValueError, RuntimeError) as e:  # a forward without position_ids, or a shape it refuses
        logger.debug("packing probe failed: %s", e)
        return False
    finally:
        model.train(was_training)
    return packed.shape == alone.shape and torch.allclose(packed, alone, rtol=1e-3, atol=1e-3 * alone.abs().max())


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed for one step on one process: dropout masks are then a function of (seed, step, rank)."""
    return (seed * 1_000_003 + step) * 1_009 + rank
