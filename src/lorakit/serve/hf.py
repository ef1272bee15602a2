"""The transformers forward under the engine: any architecture, any dtype, any device.

Running rows share one right-aligned KV cache (kv.BatchCache) and one forward pass, each row with its own adapter
(lorakit.adapter_rows). A row's result depends slightly on the rest of the batch (the shared cache changes its
attention's reductions): in fp32 too little to change a greedy token in practice, in bf16 enough to, which is why
bf16 Llama models on the CPU take the lean forward (llama.LeanBackend).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import nn
from transformers import DynamicCache

import lorakit
from lorakit.core.state import ATTR
from lorakit.serve.backend import Chunk, Row
from lorakit.serve.kv import BatchCache, truncate


class TransformersBackend:
    """The engine's Backend over the model's own forward; rows in the cache in the order they finished prefilling.

    Whole new prompts are prefilled together, left-padded to the longest; a prompt prefilled in chunks, or whose
    logits are wanted at every position, goes through its own forward with a cache of its own (`pending` until its
    last chunk), which then joins the batch's."""

    name = "transformers"
    decode_in_prefill = False
    padded = True

    def __init__(self, model: nn.Module, pad_id: int, merged: bool):
        """merged: the served adapter is merged into the weights (`lorakit serve --merge`): plain forwards."""
        self.model = model
        self.pad_id = pad_id
        self.merged = merged
        self.device = next(model.parameters()).device
        self.batch = BatchCache()
        self.rows: list[Row] = []
        """The decoding rows, in the cache's order."""
        self.pending: dict[int, DynamicCache] = {}
        """id(row) -> the cache of a row part-way through its prompt."""

    def check(self, key: str) -> None:
        """Every adapter lorakit loads applies here."""

    def prefill(self, chunks: Sequence[Chunk], carried: Sequence[Row] = ()
                ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        if carried:
            raise ValueError("the transformers forward does not take decoding rows along in a prefill")
        whole = [i for i, c in enumerate(chunks) if not c.start and not c.every and c.end == len(c.row.prompt)]
        last: list[torch.Tensor | None] = [None] * len(chunks)
        every: list[torch.Tensor | None] = [None] * len(chunks)
        joined: list[tuple[list[Row], DynamicCache, list[int]]] = []
        if whole:
            rows = [chunks[i].row for i in whole]
            cache, logits = self._prefill_whole(rows)
            joined.append((rows, cache, [len(r.prompt) for r in rows]))
            for k, i in enumerate(whole):
                last[i] = logits[k]
        done: dict[int, DynamicCache] = {}  # id(row) -> its cache, for the chunks below
        try:
            for i, c in enumerate(chunks):
                if last[i] is not None:
                    continue
                cache = self.pending[id(c.row)] if c.start else DynamicCache()
                logits = self._prefill_chunk(c, cache)
                done[id(c.row)] = cache
                last[i] = logits[-1]
                every[i] = logits if c.every else None
                if c.end == len(c.row.prompt):
                    joined.append(([c.row], cache, [c.end]))
        except BaseException:  # continued caches back to what they held; new ones dropped
            for c in chunks:
                if c.start and id(c.row) in done:
                    truncate(done[id(c.row)], c.start)
            raise
        for c in chunks:
            if id(c.row) in done and c.end < len(c.row.prompt):
                self.pending[id(c.row)] = done[id(c.row)]
        for rows, cache, lengths in joined:
            for row in rows:
                self.pending.pop(id(row), None)
            self.batch.add(cache, lengths)
            self.rows.extend(rows)
        return torch.stack(last), every

    def _prefill_whole(self, rows: Sequence[Row]) -> tuple[DynamicCache, torch.Tensor]:
        """Left-pads the prompts to the longest and prefills them in one pass: (their cache, last logits)."""
        lengths = [len(r.prompt) for r in rows]
        longest = max(lengths)
        ids = torch.tensor([[self.pad_id] * (longest - len(r.prompt)) + r.prompt for r in rows], device=self.device)
        mask, positions = prefill_mask(lengths, longest, self.device, self._mask_dtype())
        cache = DynamicCache()
        return cache, self._forward(rows, ids, mask, positions, cache)[:, -1]

    def _prefill_chunk(self, chunk: Chunk, cache: DynamicCache) -> torch.Tensor:
        """One row's chunk after the `start` tokens in its cache: (end - start, vocab) logits, or (1, vocab) of its
        last token unless `every`."""
        n = chunk.end - chunk.start
        ids = torch.tensor([chunk.row.prompt[chunk.start : chunk.end]], device=self.device)
        mask = torch.ones(1, chunk.end, dtype=torch.long, device=self.device)
        positions = torch.arange(chunk.start, chunk.end, device=self.device)[None]
        return self._forward([chunk.row], ids, mask, positions, cache, keep=n if chunk.every else 1)[0]

    def decode(self, rows: Sequence[Row]) -> torch.Tensor:
        self._arrange(rows)
        ids = torch.tensor([[r.output[-1]] for r in rows], device=self.device)
        mask = self.batch.step_mask()
        positions = torch.tensor([[len(r.prompt) + len(r.output) - 1] for r in rows], device=self.device)
        lengths = self.batch.lengths()
        try:
            logits = self._forward(rows, ids, mask, positions, self.batch.cache)[:, -1]
        except BaseException:  # the layers it reached hold one more column: back to the cache as it was
            self.batch.restore(lengths)
            raise
        self.batch.advance(mask)
        return logits

    def probe(self, row: Row, chunk: Chunk | None = None) -> None:
        if chunk is not None:
            cache = self.pending[id(row)] if chunk.start else DynamicCache()
            try:
                self._prefill_chunk(chunk._replace(every=False), cache)
            finally:
                if chunk.start:
                    truncate(cache, chunk.start)
            return
        cache, mask = self.batch.row(self.rows.index(row))
        ids = torch.tensor([[row.output[-1]]], device=self.device)
        positions = torch.tensor([[len(row.prompt) + len(row.output) - 1]], device=self.device)
        self._forward([row], ids, torch.cat([mask, mask.new_ones(1, 1)], dim=1), positions, cache)

    def release(self, rows: Sequence[Row]) -> None:
        gone = {id(r) for r in rows}
        for key in gone:
            self.pending.pop(key, None)
        if any(id(r) in gone for r in self.rows):
            self._arrange([r for r in self.rows if id(r) not in gone])

    def reset(self) -> None:
        self.batch = BatchCache()
        self.rows = []
        self.pending = {}

    def _arrange(self, rows: Sequence[Row]) -> None:
        """Make the cache hold these rows, in this order (one copy of the cache, none when it already does)."""
        if len(rows) == len(self.rows) and all(map(operator.is_, rows, self.rows)):
            return
        index = {id(r): i for i, r in enumerate(self.rows)}
        self.batch.keep([index[id(r)] for r in rows])
        self.rows = list(rows)

    def _mask_dtype(self) -> torch.dtype | None:
        """None: a boolean mask (sdpa); else the dtype of an additive mask (eager attention adds it)."""
        impl = getattr(self.model.config, "_attn_implementation", "sdpa")
        return None if impl == "sdpa" else next(self.model.parameters()).dtype

    def _forward(self, rows: Sequence[Row], ids: torch.Tensor, mask: torch.Tensor | None,
                 positions: torch.Tensor | None, cache: DynamicCache, keep: int = 1) -> torch.Tensor:
        """(B, keep, vocab) logits after the last `keep` tokens; one pass serves every row's adapter.

        Only the forward runs in inference mode: adapters loaded in it would be inference tensors, which the
        core's change detection (tensor version counters) cannot read.
        """
        kwargs = dict(attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=keep)
        state = getattr(self.model, ATTR, None)
        if self.merged or state is None or not state.names:
            with torch.inference_mode():
                return self.model(ids, **kwargs).logits
        # The pool replaces tensors on (re)load and nothing edits them in place: skip the per-step weight scan.
        with lorakit.adapter_rows(self.model, [r.key for r in rows], check_weights=False), torch.inference_mode():
            return self.model(ids, **kwargs).logits


def prefill_mask(lengths: list[int], longest: int, device: torch.device, dtype: torch.dtype | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, L, L) attention mask and (n, L) positions for left-padded prompts prefilled together.

    Real tokens attend causally to their own prompt only. A padding position attends to itself alone, so no
    softmax row is empty (an all-masked row gives NaN, which would reach the cache); its keys and values are
    finite and every later query masks them out.
    """
    pad = torch.tensor([longest - n for n in lengths], device=device)[:, None, None]
    q = torch.arange(longest, device=device)[:, None]
    k = torch.arange(longest, device=device)[None, :]
    allowed = ((k <= q) & (k >= pad)) | (k == q)  # (n, L, L)
    positions = (torch.arange(longest, device=device)[None, :] - pad[:, :, 0]).clamp(min=0)
    if dtype is None:
        return allowed[:, None], positions
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None], positions
