"""Each batch row's LoRA factors for the lean forward (llama.py), laid out as kernels.lora_rows reads them.

The lean forward fuses q,k,v and gate,up into one product each; an adapter's factors on a fused product are its
targets' Aᵀ side by side and their s·Bᵀ over the fused output (AdapterFactors). A batch's rows are grouped per
product by the ranks their adapters have there (RowGroup), each distinct adapter's factors stacked once, so no
row is padded to another adapter's rank. Adapters are looked up by key when a batch changes, not at each step.
"""

from __future__ import annotations

import operator
from typing import NamedTuple, Protocol

import torch
from torch import nn

from lorakit.core.errors import AdapterError
from lorakit.core.layers import MAGNITUDE, LoraLinear
from lorakit.core.state import ATTR, wrappers
from lorakit.serve import kernels

ATTN = ("q_proj", "k_proj", "v_proj")
MLP = ("gate_proj", "up_proj")
PRODUCTS = {"qkv": ATTN, "o": ("o_proj",), "gate_up": MLP, "down": ("down_proj",)}
"""The lean forward's products and the projections each fuses, in the order of their output columns."""
TARGETS = tuple(t for targets in PRODUCTS.values() for t in targets)
TRANSFORMERS = "restart the server with --dtype float32 to use the transformers forward, which applies it"
ADAPTERS_KEPT = 32  # adapters whose factors stay cached besides those of the current batch, least recently used out


class Block(Protocol):
    """What the tables read of one decoder layer of the lean forward (llama.Block)."""

    columns: dict[str, tuple[int, int]]
    """Projection -> its columns (start, end) in its product's fused output."""
    widths: dict[str, int]
    """Product -> the width of its fused output."""

    def module(self, target: str) -> nn.Module: ...


class AdapterFactors(NamedTuple):
    """One adapter's LoRA on one layer's fused product."""

    shape: tuple
    """((target, rank), ...): its rank on each target of the product it adapts, in the product's order."""
    a: torch.Tensor
    """(in, Σr) bf16: those targets' Aᵀ side by side."""
    b: torch.Tensor
    """(Σr, width) bf16: each target's s·Bᵀ on its columns of the fused output, zero elsewhere."""


class RowGroup(NamedTuple):
    """The batch rows whose adapters have the same ranks on one fused product, with those adapters' factors
    stacked, for kernels.lora_rows. The factors of each distinct adapter are stored once, in bf16."""

    rows: torch.Tensor | None
    """The batch rows in this group, ascending (None: every row)."""
    adapter_ids: torch.Tensor
    """(rows,) int64: each row's adapter, an index into the tables."""
    a: torch.Tensor
    """(adapters x in, Σr): row j·in + k is column k of adapter j's A, every adapted target's A stacked."""
    b: torch.Tensor
    """(adapters x Σr, out): row j·Σr + r is row r of adapter j's s·Bᵀ over the whole fused output (zero outside its
    target's columns, which the kernel does not read)."""
    targets: object
    """kernels.lora_targets: each adapted target's ranks and columns of the output."""


class PromptRows:
    """A prefill's prompts, their tokens the rows of one batch: request i's tokens are rows bounds[i] = (start,
    end). Each token uses its request's adapter; a RowGroup's token rows are worked out once per prefill for every
    layer whose group has the same rows."""

    def __init__(self, bounds: list[tuple[int, int]]):
        self.bounds = bounds
        self._tokens: dict[tuple, tuple] = {}

    def token_rows(self, group: RowGroup) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the token rows of the group's requests, or None for every row; each token's adapter id)."""
        key = (tuple(group.adapter_ids.tolist()), None if group.rows is None else tuple(group.rows.tolist()))
        if key not in self._tokens:
            requests = range(len(group.adapter_ids)) if group.rows is None else group.rows.tolist()
            index = None if group.rows is None else torch.cat([torch.arange(*self.bounds[r]) for r in requests])
            counts = torch.tensor([self.bounds[r][1] - self.bounds[r][0] for r in requests])
            self._tokens[key] = index, group.adapter_ids.repeat_interleave(counts)
        return self._tokens[key]


def _current(probe: tuple, key: str) -> bool:
    """Whether adapter `key` is still the load its factors were built from (probe: a block, target, the module
    there and its A then): the module still in the model, and its A for `key` the same tensor."""
    block, target, module, a = probe
    return block.module(target) is module and key in module.lora_A and module.lora_A[key] is a


class LoraTables:
    """Per layer and fused product, the LoRA groups (RowGroup) of a batch whose rows use the given adapters."""

    def __init__(self, model: nn.Module, blocks: list[Block]):
        self.model = model
        self.blocks = blocks
        # Module paths whose adapters the lean forward applies; by path, as adapters loaded later wrap new modules.
        self.known = {f"model.layers.{i}.{'self_attn' if t in ATTN + ('o_proj',) else 'mlp'}.{t}": (i, t)
                      for i in range(len(blocks)) for t in TARGETS}
        self.adapters: dict[str, tuple] = {}
        """Adapter key -> (probe, its factors per layer), least recently used first: see factors."""
        self._batch: tuple | None = None  # ((adapter version, names), tables): see for_rows
        self._stacks: dict[tuple, tuple] = {}  # (layer, product, shape) -> (factors, a, b, targets): _stack

    def check(self, key: str) -> None:
        """AdapterError if adapter `key` adapts anything the lean forward does not apply."""
        self.factors(key)

    def factors(self, key: str) -> list[dict[str, AdapterFactors]]:
        """Per layer: fused product -> adapter `key`'s factors there (absent where it adapts nothing). Built once
        per load of the adapter and kept while it stays loaded and recently used (for_rows trims the cache), so a
        batch that changes only puts cached factors together. AdapterError if the adapter changes anything the
        lean forward does not apply."""
        found = self.adapters.pop(key, None)
        if found is not None and _current(found[0], key):
            self.adapters[key] = found  # most recently used last
            return found[1]
        adapted: dict[tuple[int, str], list[tuple[str, LoraLinear]]] = {}  # (layer, product) -> its adapted targets
        paths: dict[tuple[int, str], str] = {}  # (layer, product) -> the path of its modules' parent
        probe = None  # (block, target, module, its A for `key`): what tells a reload, which replaces every tensor
        for path, module in wrappers(self.model):
            where = self.known.get(path)
            if where is not None:
                if key in getattr(module, MAGNITUDE, {}):
                    raise AdapterError(f"adapter uses DoRA at {path}, which the lean bf16 forward does not apply; "
                                       f"{TRANSFORMERS}")
                if key in module.lora_A:
                    layer, target = where
                    product = next(p for p, targets in PRODUCTS.items() if target in targets)
                    adapted.setdefault((layer, product), []).append((target, module))
                    paths[(layer, product)] = path.rsplit(".", 1)[0]
                    probe = probe or (self.blocks[layer], target, module, module.lora_A[key])
                continue
            if key in getattr(module, "lora_A", {}) or key in getattr(module, "copies", {}):
                raise AdapterError(f"adapter changes {path}, which the lean bf16 forward does not apply (it adapts "
                                   f"only {', '.join(TARGETS)}); {TRANSFORMERS}")
        factors: list[dict[str, AdapterFactors]] = [{} for _ in self.blocks]
        for (layer, product), modules in adapted.items():
            order = PRODUCTS[product]
            modules.sort(key=lambda tm: order.index(tm[0]))
            shape = tuple((t, m.lora_A[key].shape[0]) for t, m in modules)
            total = sum(rank for _, rank in shape)
            if total > kernels.MAX_RANK:
                raise AdapterError(f"adapter's ranks add up to {total} in {paths[layer, product]}.{product}, more than "
                                   f"the lean bf16 forward's {kernels.MAX_RANK} per fused product; {TRANSFORMERS}")
            block = self.blocks[layer]
            b = torch.zeros(total, block.widths[product])
            r0 = 0
            for (target, rank), (_, m) in zip(shape, modules, strict=True):
                lo, hi = block.columns[target]
                b[r0 : r0 + rank, lo:hi] = m.lora_B[key].detach().float().t() * m.scaling[key]
                r0 += rank
            a = torch.cat([m.lora_A[key].detach().float() for _, m in modules]).t()
            factors[layer][product] = AdapterFactors(shape, a.to(torch.bfloat16).contiguous(), b.to(torch.bfloat16))
        if probe is not None:  # an adapter on none of these modules has nothing to cache
            self.adapters[key] = (probe, factors)
        return factors

    def for_rows(self, names: list[str | None]) -> list[dict[str, list[RowGroup]]]:
        """Per layer: fused product -> the LoRA groups of rows using adapters `names` (None: the base model),
        rows grouped by the ranks their adapter has there. Built once per choice of rows (a decode step reuses its
        predecessor's) from each adapter's cached factors; a product's stacked tables are reused while its set of
        adapters stays."""
        state = getattr(self.model, ATTR, None)
        version = state.version if state else -1
        if self._batch is not None and self._batch[0] == (version, tuple(names)):
            return self._batch[1]
        if self._batch is None or self._batch[0][0] != version:  # adapters loaded or deleted since
            self._stacks.clear()
            for key in [k for k, (probe, _) in self.adapters.items() if not _current(probe, k)]:
                del self.adapters[key]
        rows_of: dict[str, list[int]] = {}
        for row, name in enumerate(names):
            if name is not None:
                rows_of.setdefault(name, []).append(row)
        factors = {key: self.factors(key) for key in sorted(rows_of)}  # sorted: one order for one set of adapters
        for key in list(self.adapters)[: max(0, len(self.adapters) - len(factors) - ADAPTERS_KEPT)]:
            if key not in factors:  # least recently used first
                del self.adapters[key]
        placed: dict[tuple[str, ...], tuple] = {}  # a group's adapters -> (its rows or None, each row's adapter)
        tables = []
        for layer, block in enumerate(self.blocks):
            table = {}
            for product in PRODUCTS:
                by_shape: dict[tuple, list[str]] = {}
                for key, adapter in factors.items():
                    found = adapter[layer].get(product)
                    if found is not None:
                        by_shape.setdefault(found.shape, []).append(key)
                groups = []
                for shape, keys in by_shape.items():
                    group = tuple(keys)
                    if group not in placed:
                        rows = sorted(r for key in group for r in rows_of[key])
                        placed[group] = (None if len(rows) == len(names) else torch.tensor(rows),
                                         torch.tensor([group.index(names[r]) for r in rows]))
                    stack = self._stack(block, layer, product, shape, [factors[k][layer][product] for k in group])
                    groups.append(RowGroup(*placed[group], *stack))
                if groups:
                    table[product] = groups
            tables.append(table)
        self._batch = ((version, tuple(names)), tables)
        return tables

    def _stack(self, block: Block, layer: int, product: str, shape: tuple, factors: list[AdapterFactors]) -> tuple:
        """(a, b, targets) of RowGroup for adapters of one shape on one product: their factors stacked, or the
        last stack of that product and shape when it holds the same factors."""
        last = self._stacks.get((layer, product, shape))
        if last is not None and len(last[0]) == len(factors) and all(map(operator.is_, last[0], factors)):
            return last[1:]
        r0, targets = 0, []
        for target, rank in shape:
            targets.append((r0, rank, *block.columns[target]))
            r0 += rank
        stack = (torch.cat([f.a for f in factors]), torch.cat([f.b for f in factors]), kernels.lora_targets(targets))
        self._stacks[(layer, product, shape)] = (tuple(factors), *stack)
        return stack
