"""Put adapters into a model and take them out again, without editing the model's code."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterError, ConfigError, TargetError
from lorakit.core.layers import LoraConv2d, LoraEmbedding, LoraLinear, SavedModule, put_adapter
from lorakit.core.params import adapter_report
from lorakit.core.state import ATTR, AdapterState, is_wrapper, state_of, wrappers
from lorakit.core.targets import describe, find_targets, kind_of, matches, plain_modules

_WRAPPERS = {"Linear": LoraLinear, "Conv1D": LoraLinear, "Embedding": LoraEmbedding, "Conv2d": LoraConv2d}


def inject(model: nn.Module, config: LoraConfig, name: str = "default", verbose: bool = False) -> nn.Module:
    """Wrap the modules config.targets selects, add adapter `name`, and freeze all but its trainable parameters.

    The first adapter injected or loaded becomes active. Until unwrap, the model's save_pretrained refuses (see
    RefusedSave). Returns the same model object.
    """
    inject_factors(model, config, name, None)
    set_trainable(model, name)
    if verbose:
        print(adapter_report(model, name))
    return model


def inject_factors(
    model: nn.Module, config: LoraConfig, name: str, factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] | None
) -> None:
    """Wrap and register adapter `name`; initialize it per config.init, or install given (A, B, scale) per module."""
    if not isinstance(config, LoraConfig):
        raise ConfigError(f"inject needs a LoraConfig, got {type(config).__name__}")
    state = getattr(model, ATTR, None)
    if state is None:
        state = AdapterState(requires_grad={n: p.requires_grad for n, p in model.named_parameters()})
    elif config.init == "pissa" or any(c.init == "pissa" for c in state.configs.values()):
        raise AdapterError(
            "a PiSSA adapter rewrites the base weights, so it cannot share a model with other adapters; "
            "save it (it is saved as a plain LoRA adapter) and load both onto a fresh base model"
        )
    state.check_new(name)
    if factors is None:
        found = find_targets(model, config.targets, config.layers)
    else:  # loading: the plan already resolved exact module paths and checked their shapes
        found = [(p, kind_of(getattr(m, "base_layer", m))) for p in factors for m in (model.get_submodule(p),)]
    _check_slices(config, found)
    saved = _find_saved(model, config.modules_to_save)
    if getattr(model, ATTR, None) is None and hasattr(model, "save_pretrained"):
        model.save_pretrained = RefusedSave()
    setattr(model, ATTR, state)
    state.register(name, config)
    for path, kind in found:
        module = model.get_submodule(path)
        if not is_wrapper(module):
            slices = _slices_for(path, config)
            module = _WRAPPERS[kind](module, state, slices) if kind in ("Linear", "Conv1D") else _WRAPPERS[kind](
                module, state
            )
            model.set_submodule(path, module)
        if factors is None:
            module.add_adapter(name, config.rank, config.scaling, config.dropout, config.init)
        else:
            a, b, scale = factors[path]
            w = module.weight_2d()
            put_adapter(module, name, a.to(w.device, w.dtype), b.to(w.device, w.dtype), scale, config.dropout)
    for path in saved:
        module = model.get_submodule(path)
        if not isinstance(module, SavedModule):
            module = SavedModule(module, state)
            model.set_submodule(path, module)
        module.add_copy(name)
    state.version += 1  # the set of wrappers changed: cached wrapper lists and stacked tables are stale


class RefusedSave:
    """A wrapped transformers model's save_pretrained: it would write the wrapper's keys (`q_proj.base_layer.weight`,
    `lora_A.default`), which from_pretrained loads without an error as the base model with the adapted weights
    freshly initialised. transformers.Trainer saves through it, so a plain Trainer stops here too."""

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise AdapterError(
            "this model carries lorakit adapters, and save_pretrained would write a file that from_pretrained "
            "loads as a broken model (its adapted weights freshly initialised). Save the adapter with "
            "lorakit.save_adapter(model, DIR) (PEFT's format); for one plain model, lorakit.merge(model, NAME) and "
            "lorakit.unwrap(model) first (or `lorakit merge`); with transformers.Trainer, train with "
            "lorakit.train.hf.LorakitTrainer, whose checkpoints and save_model write the adapter."
        )


def set_trainable(model: nn.Module, name: str) -> None:
    """Freeze everything except adapter `name`'s LoRA factors, its saved-module copies and its bias mode's biases."""
    state = state_of(model)
    state.require(name)
    bias = state.configs[name].bias
    for p in model.parameters():
        p.requires_grad_(False)
    for _, module in wrappers(model):
        if isinstance(module, SavedModule):
            if name in module.copies:
                module.copies[name].requires_grad_(True)
            continue
        if name in module.lora_A:
            module.lora_A[name].requires_grad_(True)
            module.lora_B[name].requires_grad_(True)
            if bias == "lora_only" and getattr(module.base_layer, "bias", None) is not None:
                module.base_layer.bias.requires_grad_(True)
    if bias == "all":
        for pname, p in model.named_parameters():
            if pname.endswith("bias") and ".lora_" not in pname and ".copies." not in pname:
                p.requires_grad_(True)


def _check_slices(config: LoraConfig, found: list[tuple[str, str]]) -> None:
    for key in config.slices:
        hits = [(p, k) for p, k in found if matches(p, (key,))]
        if not hits:
            raise ConfigError(f"slices names {key!r}, which is not among the adapted modules; add it to targets")
        bad = [p for p, k in hits if k not in ("Linear", "Conv1D")]
        if bad:
            raise ConfigError(f"slices apply to Linear/Conv1D projections only, not {bad[:3]}")


def _slices_for(path: str, config: LoraConfig) -> tuple[bool, ...] | None:
    for key, mask in config.slices.items():
        if matches(path, (key,)):
            return mask
    return None


def _find_saved(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for target in names:
        hits = [n for n, _ in plain_modules(model) if n and matches(n, (target,))]
        hits = [n for n in hits if not any(n.startswith(h + ".") for h in hits)]
        if not hits:
            top = sorted({n.split(".")[0] for n, _ in model.named_children()})
            raise TargetError(
                f"modules_to_save names {target!r}, which matches no module; top-level modules are {top}; "
                f"adaptable modules: {describe(model)}"
            )
        out += hits
    return out


def set_active(model: nn.Module, name: str | None) -> None:
    """Make adapter `name` (or None: the base model) the one every plain forward uses; O(1), no weights move."""
    state = state_of(model)
    if name is not None:
        state.require(name)
    state.active = name


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter `name` from every layer (it must not be merged)."""
    state = state_of(model)
    state.require(name)
    for _, module in wrappers(model):
        module.remove_adapter(name)
    state.unregister(name)


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its base; merged adapters are unmerged then merged back."""
    from lorakit.core.merge import merge, merged_names, unmerge

    state = state_of(model)
    was = merged_names(model)
    unmerge(model)
    state.disabled = True
    try:
        yield model
    finally:
        state.disabled = False
        for name in was:
            merge(model, name, safe=False)


@contextmanager
def adapter_rows(
    model: nn.Module, choices: Sequence[str | None] | torch.Tensor, check_weights: bool = True
) -> Iterator[nn.Module]:
    """Within the block, batch row i uses adapter choices[i] (a name, or None for the base model).

    A tensor of indices is accepted too (0 = base, i = the i-th loaded adapter, in load order). Works for forward
    and for generate (beam search repeats rows; the choices repeat with them).

    check_weights looks for LoRA factors changed in place since the last mixed batch (e.g. by training), whose
    stacked tables must then be rebuilt. That reads every factor's version counter: ~7,700 tensors with 64
    adapters on SmolLM2, about 5% of a 32-row decode step. Code that never edits loaded factors in place (a
    server, which replaces tensors on reload, and loading bumps the registry's version) passes False.
    """
    state = state_of(model)
    if isinstance(choices, torch.Tensor):
        rows = choices.to(torch.long)
        if rows.dim() != 1 or (rows.numel() and (rows.min() < 0 or rows.max() > len(state.names))):
            raise AdapterError(f"adapter ids must be a 1-D tensor in [0, {len(state.names)}]; got {choices}")
    else:
        rows = torch.tensor([state.index(c) for c in choices], dtype=torch.long)
    if check_weights:
        _refresh_version(model, state)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    previous = state.rows
    state.rows = rows.to(device)
    try:
        yield model
    finally:
        state.rows = previous


def _refresh_version(model: nn.Module, state: AdapterState) -> None:
    """Bump the version if any LoRA factor changed in place since the tables were built (e.g. after training).

    Inference tensors have no version counter; they cannot be changed in place outside inference mode, and any
    reload replaces them, which the registry's version already records.
    """
    if getattr(state, "_params", (None,))[0] != state.version:
        params = [p for _, m in wrappers(model) for d in (getattr(m, "lora_A", {}), getattr(m, "lora_B", {}))
                  for p in d.values()]
        state._params = (state.version, params)
    key = tuple(-1 if p.is_inference() else p._version for p in state._params[1])
    if getattr(state, "_weights_key", None) != key:
        state.version += 1
        state._weights_key = key
        state._params = (state.version, state._params[1])


def unwrap(model: nn.Module) -> nn.Module:
    """Put every original module object back (merged adapters stay merged) and restore requires_grad flags."""
    from lorakit.core.merge import merged_names

    state = state_of(model)
    merged = merged_names(model)
    for path, module in list(wrappers(model)):
        if isinstance(module, SavedModule):
            keep = next((module.copies[n] for n in merged if n in module.copies), module.original_module)
            model.set_submodule(path, keep)
            continue
        if not module.merged and getattr(module, "original_weight", None) is not None:
            with torch.no_grad():
                module.base_layer.weight.copy_(module.original_weight)
        model.set_submodule(path, module.base_layer)
    for pname, p in model.named_parameters():
        p.requires_grad_(state.requires_grad.get(pname, p.requires_grad))
    delattr(model, ATTR)
    if isinstance(model.__dict__.get("save_pretrained"), RefusedSave):
        del model.save_pretrained
    return model
