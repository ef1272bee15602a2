"""KV caches for the engine's two forwards.

SlotCache (the lean forward, llama.py): each request owns a slot of every layer's cache, its keys from position 0,
and attends over exactly its own; a slot is handed back when the request leaves.

BatchCache (the transformers forward): rows of different lengths, right-aligned, joining and leaving between
steps. Every row's tokens end at the same column, so one decode step appends one column for all rows; a row shorter than
the longest is left-padded with zeros that its attention mask hides. Joins and leaves copy the cache once; a decode
step writes in place into preallocated room (transformers' DynamicLayer would re-concatenate the whole cache every
step, which for 32 rows of SmolLM2 is ~100 MB copied per token).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

ROOM = 64  # columns of headroom allocated at each rebuild: a rebuild (a copy) happens at most every 64 steps
BUCKET = 64  # a SlotCache's capacity grows in multiples of this


class SlotCache:
    """Per layer, keys and values (slots, kv_heads, capacity, head_dim) in bf16; `lengths[s]` tokens of slot s are
    filled (0: free). Grows by reallocating: doubling the slots when none is free, and at least doubling the
    capacity when a request needs more, up to the model's context."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, context: int):
        self.layers, self.kv_heads, self.head_dim, self.context = layers, kv_heads, head_dim, context
        self.reset()

    def reset(self) -> None:
        """Forget every slot and its cache."""
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []
        self.free: list[int] = []

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.free.append(slot)

    def take(self, length: int) -> int:
        """A free slot with room for `length` tokens, growing the cache if needed (doubling the slots)."""
        if not self.free:
            old = len(self.lengths)
            self._grow(max(1, 2 * old), max(length, self.capacity))
            self.free = list(range(old, len(self.lengths)))
        elif length > self.capacity:
            self._grow(len(self.lengths), length)
        return self.free.pop(0)

    def fit(self, length: int) -> None:
        """Room for `length` tokens in every slot (a decode step's longest row, its new token included)."""
        if _bucket(length) > self.capacity:
            self._grow(len(self.lengths), _bucket(length))

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def _grow(self, slots: int, capacity: int) -> None:
        """Reallocate every layer's cache to (slots, capacity); a capacity that must grow at least doubles (so
        long generations copy the cache O(log n) times), up to the model's context."""
        old = self.capacity
        if capacity > old:
            capacity = _bucket(min(max(capacity, 2 * old), max(capacity, self.context)))
        shape = (slots, self.kv_heads, max(capacity, old), self.head_dim)

        def grown(cache: torch.Tensor | None) -> torch.Tensor:
            new = torch.zeros(shape, dtype=torch.bfloat16)
            if cache is not None:
                new[: cache.shape[0], :, :old] = cache
            return new

        self.keys = [grown(self.keys[i] if self.keys else None) for i in range(self.layers)]
        self.values = [grown(self.values[i] if self.values else None) for i in range(self.layers)]
        self.lengths += [0] * (slots - len(self.lengths))


def _bucket(keys: int) -> int:
    return -(-keys // BUCKET) * BUCKET


class GrowingLayer(DynamicLayer):
    """One layer's (B, heads, T, head_dim) keys and values inside a larger buffer; update writes in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.buf_k, self.buf_v, self.length = keys, values, length
        self.device = keys.device
        self.is_initialized = True
        self._expose()

    def _expose(self) -> None:
        self.keys = self.buf_k[:, :, : self.length]
        self.values = self.buf_v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        q = key_states.shape[-2]
        if self.length + q > self.buf_k.shape[2]:
            self.buf_k = _with_room(self.buf_k, self.length, self.length + q + ROOM)
            self.buf_v = _with_room(self.buf_v, self.length, self.length + q + ROOM)
        self.buf_k[:, :, self.length : self.length + q] = key_states
        self.buf_v[:, :, self.length : self.length + q] = value_states
        self.length += q
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


def truncate(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` tokens of every layer of a one-row cache (a forward that raised may have added to
    some layers and not to others)."""
    for layer in cache.layers:
        if isinstance(layer, GrowingLayer):
            layer.length = min(layer.length, length)
            layer._expose()
        elif layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys[:, :, :length]
            layer.values = layer.values[:, :, :length]


def _with_room(buf: torch.Tensor, used: int, capacity: int) -> torch.Tensor:
    out = buf.new_zeros(buf.shape[0], buf.shape[1], capacity, buf.shape[3])
    out[:, :, :used] = buf[:, :, :used]
    return out


class BatchCache:
    """KV cache and attention mask of the running rows, in row order.

    mask is (B, T) int64: 1 where a row has a real token. Row i's tokens occupy the last lengths[i] columns.
    """

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def add(self, prefill: DynamicCache, lengths: list[int]) -> None:
        """Append rows prefilled together into `prefill`: (n, heads, L, head_dim), row i's prompt in its last
        lengths[i] columns (left padding before it is never attended to: the mask hides it)."""
        n, width_new = len(lengths), prefill.layers[0].keys.shape[2]
        width = max(self.width, width_new)
        layers = [self._join(self.cache.layers[i] if self.cache is not None else None, layer.keys, layer.values,
                             width) for i, layer in enumerate(prefill.layers)]
        device = prefill.layers[0].keys.device
        mask = torch.zeros(self.rows + n, width, dtype=torch.long, device=device)
        mask[: self.rows, width - self.width :] = self.mask.to(device)
        for j, length in enumerate(lengths):
            mask[self.rows + j, width - length :] = 1
        self._install(layers, mask)

    def _join(self, old: GrowingLayer | None, k: torch.Tensor, v: torch.Tensor, width: int) -> GrowingLayer:
        rows, n = self.rows, k.shape[0]
        shape = (rows + n, k.shape[1], width + ROOM, k.shape[3])
        keys, values = k.new_zeros(shape), v.new_zeros(shape)
        if old is not None:
            keys[:rows, :, width - self.width : width] = old.keys
            values[:rows, :, width - self.width : width] = old.values
        keys[rows:, :, width - k.shape[2] : width] = k
        values[rows:, :, width - v.shape[2] : width] = v
        return GrowingLayer(keys, values, width)

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows (in this order), then drop leading columns that no remaining row uses."""
        if not indices:
            self.cache = None
            self.mask = torch.zeros(0, 0, dtype=torch.long)
            return
        assert self.cache is not None
        idx = torch.tensor(indices, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        used = mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        layers = []
        for layer in self.cache.layers:
            keys = layer.keys.index_select(0, idx)[:, :, start:]
            values = layer.values.index_select(0, idx)[:, :, start:]
            layers.append(GrowingLayer(_with_room(keys, keys.shape[2], keys.shape[2] + ROOM),
                                       _with_room(values, values.shape[2], values.shape[2] + ROOM), keys.shape[2]))
        self._install(layers, mask[:, start:])

    def row(self, i: int) -> tuple[DynamicCache, torch.Tensor]:
        """A copy of row i alone: its cache (the batch's width, with room for a step) and its (1, T) mask."""
        layers = [GrowingLayer(_with_room(layer.keys[i : i + 1], layer.length, layer.length + ROOM),
                               _with_room(layer.values[i : i + 1], layer.length, layer.length + ROOM), layer.length)
                  for layer in self.cache.layers]
        cache = DynamicCache()
        cache.layers = layers
        cache.layer_class_to_replicate = None
        return cache, self.mask[i : i + 1]

    def lengths(self) -> list[int]:
        """Each layer's columns in use (a forward that raises may have added one to some layers only)."""
        return [layer.length for layer in self.cache.layers] if self.cache is not None else []

    def restore(self, lengths: list[int]) -> None:
        """Back to the columns `lengths` gave (what was written after them is never read)."""
        for layer, length in zip(self.cache.layers if self.cache is not None else [], lengths, strict=True):
            layer.length = length
            layer._expose()

    def step_mask(self) -> torch.Tensor:
        """The (B, T+1) mask for a decode step that appends one real token to every row."""
        return torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)

    def advance(self, mask: torch.Tensor) -> None:
        """Record that a decode step ran with `mask` (its keys and values are already in the cache)."""
        self.mask = mask

    def _install(self, layers: list[GrowingLayer], mask: torch.Tensor) -> None:
        cache = DynamicCache()
        cache.layers = list(layers)
        cache.layer_class_to_replicate = None
        self.cache = cache
        self.mask = mask
