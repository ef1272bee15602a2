"""What every lorakit layer shares: its per-adapter slots, the one merge formula, and the mixed-batch helpers."""

from __future__ import annotations

import torch
from torch import nn

from lorakit.core.errors import AdapterError
from lorakit.core.state import AdapterState

# A block of a weight and its low-rank update: (index into the 2-D weight view, left, right); that block of W gets
# s·(left @ right). WHOLE_WEIGHT indexes all of W. One merge formula for all.
DeltaBlock = tuple[tuple[slice, slice], torch.Tensor, torch.Tensor]
WHOLE_WEIGHT = (slice(None), slice(None))
# Mixed batches (LoraLinear._plan in linear.py): rows at least this long take the per-row path (their GEMMs
# dominate, so FLOPs should be each row's own rank); shorter ones over few adapters multiply by all present
# adapters at once.
PER_ROW_MIN_TOKENS = 8
PRESENT_MAX_ADAPTERS = 2  # short rows over more adapters than this (of about equal rank) take the per-row path
# A LoraLinear's DoRA magnitudes m (out,) by adapter name: an nn.ParameterDict that lorakit.methods.variants adds
# with the forward hook that uses them. Core saves them, reads them from files, deletes them, and refuses to merge
# them; it never computes with them.
MAGNITUDE = "lora_magnitude"




def apply_delta(w2: torch.Tensor, parts: list[DeltaBlock], scale: float) -> None:
    """w2[index] += scale·(left @ right) for each part, in place. The one merge formula."""
    for index, left, right in parts:
        if left.dtype != w2.dtype:
            left, right = left.to(w2.dtype), right.to(w2.dtype)
        (w2 if index is WHOLE_WEIGHT else w2[index]).addmm_(left, right, alpha=scale)


def init_slots(layer: nn.Module, state: AdapterState) -> None:
    """The per-adapter containers every lorakit layer has, and the model's shared state."""
    layer.lora_A = nn.ParameterDict()
    layer.lora_B = nn.ParameterDict()
    layer.scaling: dict[str, float] = {}
    layer.dropout: dict[str, float] = {}
    layer.merged: list[str] = []
    object.__setattr__(layer, "state", state)  # shared, not a submodule: keep it out of state_dict()


def forward_generic(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """base(x) plus the active adapter's lora_out, or each row's adapter's (grouped) in a mixed batch."""
    y = layer.base_layer(x)
    if layer.state.rows is not None and not layer.state.disabled and layer.lora_A:
        return mixed_by_groups(layer, x, y, row_ids_for(layer.state, x.shape[0]))
    name = active_name(layer)
    return y if name is None else y + layer.lora_out(x, name).to(y.dtype)


def row_ids_for(state: AdapterState, batch: int) -> torch.Tensor:
    """The per-row adapter indices for a batch; beam search repeats each row num_beams times, so repeat too."""
    rows = state.rows
    assert rows is not None
    if rows.shape[0] == batch:
        return rows
    if batch % rows.shape[0]:
        raise AdapterError(f"a mixed batch has {rows.shape[0]} adapter choices but the layer saw {batch} rows")
    return rows.repeat_interleave(batch // rows.shape[0])


def mixed_by_groups(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per-row adapters by grouping: one lora_out per adapter present in the batch (not per adapter loaded)."""
    out = y
    names = layer.state.names
    for idx in rows.unique().tolist():
        name = names[idx - 1] if idx else None
        if name is None or name not in layer.lora_A:
            continue
        sel = (rows == idx).nonzero().squeeze(1)
        out = out.index_add(0, sel, layer.lora_out(x[sel], name).to(y.dtype))
    return out


def active_name(layer: nn.Module) -> str | None:
    """The adapter this layer applies in a plain forward, or None (disabled, absent, or merged into W)."""
    st = layer.state
    name = st.active
    if st.disabled or name is None or name not in layer.lora_A or name in layer.merged:
        return None
    return name


def put_adapter(layer: nn.Module, name: str, a: torch.Tensor, b: torch.Tensor, scaling: float, dropout: float) -> None:
    """Install given factors as adapter `name` (no initialization work; used by add_adapter and by loading)."""
    layer.lora_A[name] = nn.Parameter(a, requires_grad=False)
    layer.lora_B[name] = nn.Parameter(b, requires_grad=False)
    layer.scaling[name] = scaling
    layer.dropout[name] = dropout


def remove_adapter(layer: nn.Module, name: str) -> None:
    """Drop one adapter's tensors and settings from a layer."""
    if name in layer.merged:
        raise AdapterError(f"adapter {name!r} is merged; unmerge it before deleting it")
    for d in (layer.lora_A, layer.lora_B, getattr(layer, MAGNITUDE, {})):
        if name in d:
            del d[name]
    for d in (layer.scaling, layer.dropout, getattr(layer, "pissa", {})):
        d.pop(name, None)
