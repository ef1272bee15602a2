"""Merge ΔW = s·B·A into W (and back), the pure ΔW / merged-weights functions, and adapter combination.

Every path computes W[index] += sign·s·(left @ right), the single merge formula: `layers.apply_delta` with addmm_,
or for fp32 CPU weights merged in place the fused kernel (core/kernel.py), which adds each row's update as it reads
the row. Neither materializes ΔW, so a merge costs about one pass over the adapted weights (section 4.2: no added
inference latency once merged).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lorakit.core import kernel
from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterError, MergeError
from lorakit.core.layers import MAGNITUDE, WHOLE_WEIGHT, DeltaBlock, apply_delta, put_adapter
from lorakit.core.state import state_of, wrappers


def lora_layers(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    return [(p, m) for p, m in wrappers(model) if name in getattr(m, "lora_A", {})]


def merged_names(model: nn.Module) -> list[str]:
    """Adapters merged into the base weights, in merge order."""
    out: list[str] = []
    for _, m in wrappers(model):
        out += [n for n in getattr(m, "merged", []) if n not in out]
    return out


def merge(model: nn.Module, name: str = "default", safe: bool = True) -> nn.Module:
    """Add adapter `name`'s ΔW into the base weights in place; idempotent. A DoRA adapter's rows are then scaled by
    m / ‖W + ΔW‖, as PEFT merges DoRA; unmerge undoes both.

    With safe=True nothing is written unless every merged weight is provably finite: the factors must be finite and
    max|W| + s·r·max|A|·max|B| (a bound on every entry of W + ΔW) must stay below the dtype's largest value;
    where that bound is inconclusive, the merged weight is computed on a copy and checked entry by entry.
    """
    state = state_of(model)
    state.require(name)
    plan = _plan(model, name)
    todo = [e for e in plan if name not in e[1].merged]
    factors = _dora_factors(todo, name, safe)
    bound = _bound(model, name, plan) if safe or _tracking(todo) else math.inf
    if safe:
        _check_finite(todo, name, bound)
    with torch.no_grad():
        _apply_all(model, name, todo, 1.0, bound)
        for (_, m, w2, _, _), factor in zip(todo, factors, strict=True):
            if factor is not None:
                _scale_outputs(m, w2, factor)
                m.__dict__.setdefault("_dora_factors", {})[name] = factor  # unmerge divides by exactly this
    for _, m, _, _, _ in todo:
        m.merged.append(name)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Subtract every merged adapter's ΔW again (exact up to fp32 rounding, ~1e-7 relative)."""
    names = merged_names(model)
    with torch.no_grad():
        for name in reversed(names):
            plan = _plan(model, name)
            todo = [e for e in plan if name in e[1].merged]
            for _, m, w2, _, _ in todo:
                factor = m.__dict__.get("_dora_factors", {}).pop(name, None)
                if factor is not None:
                    _scale_outputs(m, w2, factor, divide=True)
            bound = _bound(model, name, plan) if _tracking(todo) else math.inf
            _apply_all(model, name, todo, -1.0, bound)
            for _, m, _, _, _ in todo:
                m.merged.remove(name)
    return model


def _refuse_dora(name: str, layers: list[tuple[str, nn.Module]], what: str) -> None:
    """MergeError if adapter `name` is DoRA on any of `layers`: its update is m ⊙ (W + ΔW)/‖W + ΔW‖, not ΔW."""
    dora = [path for path, m in layers if name in getattr(m, MAGNITUDE, ())]
    if dora:
        raise MergeError(f"adapter {name!r} is DoRA (a magnitude m on {dora[0]} and {len(dora) - 1} more layers) and "
                         f"cannot be {what}: its update m ⊙ (W + ΔW)/‖W + ΔW‖ is not a sum of ΔWs. "
                         "Nothing was changed; merge it on its own (lorakit.merge) or run it unmerged")


def _dora_factors(todo: list, name: str, safe: bool) -> list[torch.Tensor | None]:
    """Per planned layer: DoRA's m / ‖W + ΔW‖ per output (None where adapter `name` has no magnitude there).

    Merging DoRA is the one merge formula followed by scaling each output row by this factor, as PEFT merges it:
    W' = m ⊙ (W + ΔW) / ‖W + ΔW‖. The norm must see W alone, so no other adapter may be merged into the layer.
    """
    factors: list[torch.Tensor | None] = []
    for path, m, _, _, _ in todo:
        magnitudes = m._modules.get(MAGNITUDE)  # a dict lookup: merge runs this for every layer of every adapter
        magnitude = magnitudes[name] if magnitudes is not None and name in magnitudes else None
        if magnitude is None:
            factors.append(None)
            continue
        if m.merged:
            raise MergeError(f"cannot merge DoRA adapter {name!r}: {m.merged} already merged into {path} would enter "
                             "its norm ‖W + ΔW‖. Nothing was changed; unmerge them first")
        norm = row_norm(m, name)
        factor = magnitude.detach().to(norm.dtype) / norm
        if safe and not torch.isfinite(factor).all():
            raise MergeError(f"merging DoRA adapter {name!r} would divide by a zero norm ‖W + ΔW‖ in {path} (or its "
                             "magnitude is not finite); nothing was merged")
        factors.append(factor)
    return factors


def _scale_outputs(m: nn.Module, w2: torch.Tensor, factor: torch.Tensor, divide: bool = False) -> None:
    """Multiply (or divide) each output row of the stored weight by factor (out,): columns for GPT-2's Conv1D."""
    f = factor[None, :] if m.transposed else factor[:, None]
    w2.div_(f) if divide else w2.mul_(f)


def _plan(model: nn.Module, name: str) -> list[tuple[str, nn.Module, torch.Tensor, list[DeltaBlock], float]]:
    """(path, layer, W's 2-D view, parts, scale) for each layer adapter `name` touches.

    Cached while no module or tensor storage is replaced (registry version and every data pointer match):
    collecting this per call cost more than the 60 in-place matmuls of a merge on SmolLM2.
    """
    state = state_of(model)
    plans = getattr(state, "_merge_plans", None)
    if plans is None or plans[0] != state.version:
        plans = (state.version, {})
        state._merge_plans = plans
    hit = plans[1].get(name)
    if hit is not None and hit[0] == _storage_key(hit[2], name):
        return hit[1]
    plan = [(p, m, m.weight_2d(), m.delta_parts(name), m.scaling[name]) for p, m in lora_layers(model, name)]
    sources = [(m.base_layer._parameters, m.lora_A._parameters, m.lora_B._parameters) for _, m, _, _, _ in plan]
    plans[1][name] = (_storage_key(sources, name), plan, sources, _Calls())
    return plan


class _Calls(dict):
    """A plan's prepared kernel calls. They hold raw pointers into this model's weights, so a copy of the model
    (deepcopy, pickle) starts without them and prepares its own."""

    def __deepcopy__(self, memo: dict) -> _Calls:
        return _Calls()

    def __reduce__(self) -> tuple:
        return _Calls, ()


def _calls(model: nn.Module, name: str, todo: list) -> tuple[kernel.Fused | None, list]:
    """_prepare(todo), once per plan and choice of layers: the kernel call holds pointers into the plan's views,
    so it lives in the plan's cache entry and goes with it (_plan replaces the entry when any storage changes)."""
    calls = state_of(model)._merge_plans[1][name][3]
    key = tuple(e[0] for e in todo)
    if key not in calls:
        calls[key] = _prepare([(w2, parts, scale) for _, _, w2, parts, scale in todo])
    return calls[key]


def _prepare(layers: list[tuple[torch.Tensor, list[DeltaBlock], float]]) -> tuple[kernel.Fused | None, list]:
    """For W += s·left @ right on every part of every (W, parts, s): one fused-kernel call for all the parts it
    takes (None if none), and [(W view, left, right, s)] for the rest, which go through apply_delta's addmm_."""
    fast, rest = [], []
    for w2, parts, scale in layers:
        for index, left, right in parts:
            target = (w2 if index is WHOLE_WEIGHT else w2[index], left, right, scale)
            (fast if kernel.eligible(*target[:3]) else rest).append(target)
    run = kernel.fused(fast)
    return run, rest if run is not None else fast + rest


def _run(run: kernel.Fused | None, rest: list, sign: float, weights: list[torch.Tensor]) -> None:
    """Carry out a _prepare'd update with this sign; `weights` are the Ws it writes."""
    with torch.no_grad():
        if run is not None:
            run(sign)
            torch.autograd.graph.increment_version(weights)  # the kernel wrote outside autograd's view
        for w, left, right, scale in rest:
            apply_delta(w, [(WHOLE_WEIGHT, left, right)], sign * scale)


def _storage_key(sources: list[tuple[dict, dict, dict]], name: str) -> tuple:
    """Where each weight and factor lives now; `model.to(...)` replaces storages, which must rebuild the plan.

    Read straight from the layers' parameter dicts (module attribute access and ParameterDict indexing cost ~6 µs a
    layer: 0.37 ms per check on SmolLM2's 60 q,v layers, against ~6 ms for the merge itself; this way 0.02 ms),
    so a parameter replaced by a new one is seen too. A data pointer equal to the planned one is the planned
    storage: the plan's views keep that storage alive.
    """
    return tuple((w["weight"].data_ptr(), a[name].data_ptr(), b[name].data_ptr()) for w, a, b in sources)


def _bound(model: nn.Module, name: str, plan: list) -> float:
    """One bound for all of an adapter's layers: max r · max|left| · max|right| ≥ every entry of left @ right.

    Coarser than per-layer bounds, but two reductions over the concatenated factors, cached until a factor
    changes (their version counters); inf or nan when a factor is not finite.
    """
    factors = [(left, right) for _, _, _, parts, _ in plan for _, left, right in parts]
    if not factors:
        return 0.0
    key = tuple(-1 if t.is_inference() else t._version for pair in factors for t in pair)
    state = state_of(model)
    bounds = getattr(state, "_bounds", {})
    hit = bounds.get(name)
    if hit is None or hit[0] != (state.version, key):
        rank = max(left.shape[1] for left, _ in factors)
        lefts = torch.cat([left.reshape(-1) for left, _ in factors]).abs().max().item()
        rights = torch.cat([right.reshape(-1) for _, right in factors]).abs().max().item()
        hit = ((state.version, key), rank * lefts * rights)
        bounds[name] = hit
        state._bounds = bounds
    return hit[1]


def _apply_all(model: nn.Module, name: str, todo: list, sign: float, bound: float) -> None:
    """W += sign·s·left @ right for every part of every planned layer: one fused-kernel call for those it takes,
    addmm_ for the rest, keeping each layer's cached max|W| a valid upper bound so the next safe merge skips a scan.

    One Python thread: splitting addmm_ over two as well was slower (bench/merge_floor.py: 8.2 ms against 5.6 ms
    for SmolLM2's q,v weights out of cache) and left extra OpenMP teams spinning that slowed whatever ran next.
    """
    caches = [getattr(m, "_absmax_cache", None) for _, m, _, _, _ in todo]
    fresh = [c is not None and c[0] == w2._version for c, (_, _, w2, _, _) in zip(caches, todo, strict=True)]
    _run(*_calls(model, name, todo), sign, [e[2] for e in todo])
    for (_, m, w2, _, scale), cached, ok in zip(todo, caches, fresh, strict=True):
        if ok:  # straight into __dict__, where Module.__setattr__ puts it after ~5 µs of type checks
            m.__dict__["_absmax_cache"] = (w2._version, cached[1] + abs(scale) * bound)


def _tracking(todo: list) -> bool:
    """Whether any layer holds a cached max|W| that merging must keep a valid upper bound."""
    return any(getattr(e[1], "_absmax_cache", None) is not None for e in todo)


def _check_finite(todo: list, name: str, bound: float) -> None:
    for path, m, w2, parts, scale in todo:
        if not math.isfinite(bound) and not all(torch.isfinite(t).all() for _, left, right in parts
                                                for t in (left, right)):
            raise MergeError(f"adapter {name!r} has non-finite LoRA weights in {path}; nothing was merged")
        if _absmax(m, w2) + abs(scale) * bound < torch.finfo(w2.dtype).max:
            continue
        trial = w2.clone()
        apply_delta(trial, parts, scale)
        if not torch.isfinite(trial).all():
            raise MergeError(
                f"merging adapter {name!r} would make {path}'s weight non-finite (overflow in {w2.dtype}); "
                f"nothing was merged. Merge in float32 (model.float()) or check the adapter's weights."
            )


def _absmax(m: nn.Module, w2: torch.Tensor) -> float:
    """max|W| of a layer, cached against the weight's version counter (weights are frozen in normal use)."""
    cached = getattr(m, "_absmax_cache", None)
    if cached is None or cached[0] != w2._version:
        cached = (w2._version, w2.abs().max().item())
        m._absmax_cache = cached
    return cached[1]


def delta_weight(layer: nn.Module, name: str) -> torch.Tensor:
    """ΔW of one adapter on one layer, shaped like the base weight's 2-D view (a new tensor)."""
    with torch.no_grad():
        d = torch.zeros_like(layer.weight_2d())
        apply_delta(d, layer.delta_parts(name), layer.scaling[name])
    return d


def row_norm(layer: nn.Module, name: str) -> torch.Tensor:
    """‖W + ΔW‖ of each output row of a Linear or Conv1D layer, (out,), without gradient: DoRA's denominator, in its
    forward (methods.variants) and in its merge."""
    with torch.no_grad():
        return (layer.weight_2d() + delta_weight(layer, name)).norm(dim=0 if layer.transposed else 1)


def merged_weights(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """{base weight path: W + ΔW} for adapter `name` (DoRA: m ⊙ (W + ΔW)/‖W + ΔW‖), computed on copies; the model
    is not modified."""
    state_of(model).require(name)
    out: dict[str, torch.Tensor] = {}
    plan = _plan(model, name)
    factors = _dora_factors(plan, name, safe=True)
    copies = [m.base_layer.weight.detach().clone() for _, m, _, _, _ in plan]
    views = [w.view(w.shape[0], -1) for w in copies]
    # The parts index the 2-D view of each weight as stored, as merge's do: the same formula, the same bits.
    _run(*_prepare([(w2, parts, scale) for w2, (_, _, _, parts, scale) in zip(views, plan, strict=True)]), 1.0,
         views)
    with torch.no_grad():
        for (path, m, _, _, _), w, w2, factor in zip(plan, copies, views, factors, strict=True):
            if factor is not None:
                _scale_outputs(m, w2, factor)
            out[f"{path}.weight"] = w
    return out


def combine(
    model: nn.Module, weights: dict[str, float], name: str, rank: int | None = None
) -> nn.Module:
    """Add adapter `name` with ΔW = Σ_i w_i·ΔW_i exactly, or its best rank-`rank` approximation (SVD).

    Exact: A' = [A_1; A_2; ...], B' = [w_1 s_1 B_1, w_2 s_2 B_2, ...], scale 1 (rank = Σ r_i). With `rank`, the
    product is recompressed through QR of both factors and an SVD of the small (Σr x Σr) core, so the full
    out x in ΔW is never formed. (PEFT's "linear" combination instead averages A and B separately, which does
    not give the weighted sum of the ΔWs.)
    """
    state = state_of(model)
    for n in weights:
        state.require(n)
        if state.configs[n].modules_to_save:
            raise AdapterError(f"adapter {n!r} trains full module copies, which have no ΔW to combine")
        _refuse_dora(n, lora_layers(model, n), "combined")
    if rank is not None and rank <= 0:
        raise AdapterError(f"rank must be positive (got {rank})")
    layers = [(p, m) for p, m in wrappers(model) if any(n in getattr(m, "lora_A", {}) for n in weights)]
    ranks: list[int] = []
    factors = {}
    with torch.no_grad():
        for path, m in layers:
            a_new, b_new = _combine_layer(m, weights, rank)
            factors[path] = (a_new, b_new)
            ranks.append(a_new.shape[0] // len(getattr(m, "enabled", [0])))
    r = max(set(ranks), key=ranks.count)
    config = LoraConfig(rank=r, alpha=float(r), targets=tuple(p for p, _ in layers))
    state.register(name, config)
    for path, m in layers:
        a_new, b_new = factors[path]
        dtype = m.weight_2d().dtype
        put_adapter(m, name, a_new.to(dtype), b_new.to(dtype), 1.0, 0.0)
    return model


def _combine_layer(m: nn.Module, weights: dict[str, float], rank: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per enabled slice: concatenate the scaled factors, then optionally recompress; returns (A', B')."""
    k = len(getattr(m, "enabled", [0]))
    first = next(n for n in weights if n in m.lora_A)
    a_shape, b_shape = m.lora_A[first].shape, m.lora_B[first].shape  # Conv2d factors are 4-D; work in 2-D
    a_out, b_out = [], []
    for j in range(k):
        a_cat, b_cat = [], []
        for n, w in weights.items():
            if n not in m.lora_A:
                continue
            a, b = m.lora_A[n].float().flatten(1), m.lora_B[n].float().flatten(1)
            ra, pb = a.shape[0] // k, b.shape[0] // k
            a_cat.append(a[j * ra : (j + 1) * ra])
            b_cat.append(b[j * pb : (j + 1) * pb] * (w * m.scaling[n]))
        a_j, b_j = torch.cat(a_cat, 0), torch.cat(b_cat, 1)
        if rank is not None and rank < a_j.shape[0]:
            qb, rb = torch.linalg.qr(b_j)
            qa, ra_ = torch.linalg.qr(a_j.t())
            u, s, vh = torch.linalg.svd(rb @ ra_.t())
            root = s[:rank].sqrt()
            b_j = qb @ (u[:, :rank] * root)
            a_j = (root[:, None] * vh[:rank]) @ qa.t()
        a_out.append(a_j)
        b_out.append(b_j)
    a_new, b_new = torch.cat(a_out, 0), torch.cat(b_out, 0)
    return a_new.reshape(-1, *a_shape[1:]).contiguous(), b_new.reshape(b_shape[0], -1, *b_shape[2:]).contiguous()
