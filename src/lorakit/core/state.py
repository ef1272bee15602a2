"""The per-model adapter registry every lorakit layer of one model shares, and finding the wrappers in a model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterError

ATTR = "_lorakit"  # attribute of the wrapped model holding its AdapterState
WRAPPER_TYPES: list[type[nn.Module]] = []
"""Every lorakit wrapper class (core.layers registers each with register_wrapper)."""


def register_wrapper(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: count `cls` as a lorakit wrapper (is_wrapper, wrappers, unwrap)."""
    WRAPPER_TYPES.append(cls)
    return cls


def is_wrapper(module: nn.Module) -> bool:
    """True for lorakit's wrapper modules."""
    return isinstance(module, tuple(WRAPPER_TYPES))


@dataclass
class AdapterState:
    """What is loaded and what the next forward pass uses.

    Layers read this object instead of holding their own copy, so switching the active adapter is one
    attribute write (O(1), no weights touched) and a per-row choice reaches every layer at once.
    """

    configs: dict[str, LoraConfig] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    """Registry order; row index i+1 in `rows` means names[i], 0 means the base model."""
    active: str | None = None
    disabled: bool = False
    _rows: torch.Tensor | None = None
    _last_rows: torch.Tensor | None = None
    rows_version: int = 0
    """Bumped whenever `rows` is set, so layers can cache per-row gathers for the life of one choice of rows."""
    version: int = 0
    """Bumped whenever adapters are added, removed or their weights change: layers rebuild cached stacks."""
    requires_grad: dict[str, bool] = field(default_factory=dict)
    """Each parameter's requires_grad before the first inject, restored by unwrap."""

    @property
    def rows(self) -> torch.Tensor | None:
        """(batch,) int64 adapter index per row while a mixed batch runs, else None."""
        return self._rows

    @rows.setter
    def rows(self, value: torch.Tensor | None) -> None:
        # Same choices as the last mixed batch (e.g. the next decode step): keep the version so layers reuse
        # their per-rows tables instead of rebuilding them every step.
        last = self._last_rows
        if value is not None and not (last is not None and last.shape == value.shape and torch.equal(last, value)):
            self.rows_version += 1
            self._last_rows = value
        self._rows = value

    def register(self, name: str, config: LoraConfig) -> None:
        self.check_new(name)
        self.configs[name] = config
        self.names.append(name)
        self.version += 1
        if self.active is None:
            self.active = name

    def check_new(self, name: str) -> None:
        """AdapterError if `name` is already loaded."""
        if name in self.configs:
            raise AdapterError(
                f"an adapter named {name!r} is already loaded (loaded: {self.names}); choose another name "
                f"or delete it first with lorakit.delete_adapter(model, {name!r})"
            )

    def unregister(self, name: str) -> None:
        self.require(name)
        del self.configs[name]
        self.names.remove(name)
        self.version += 1
        if self.active == name:
            self.active = self.names[0] if self.names else None

    def require(self, name: str) -> None:
        if name not in self.configs:
            raise AdapterError(f"no adapter named {name!r}; loaded adapters: {self.names or 'none'}")

    def index(self, name: str | None) -> int:
        """Row index of an adapter name (None -> 0, the base model)."""
        if name is None:
            return 0
        self.require(name)
        return self.names.index(name) + 1


def state_of(model: nn.Module) -> AdapterState:
    """The AdapterState of a wrapped model; AdapterError if the model has no adapters."""
    state = getattr(model, ATTR, None)
    if state is None:
        raise AdapterError("this model has no lorakit adapters; call lorakit.inject or lorakit.load_adapter first")
    return state


def wrappers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, wrapper) for every lorakit wrapper in the model.

    Cached against the registry's version (every inject, load and delete bumps it): walking all modules of a
    30-layer model costs about a millisecond, more than a merge's arithmetic.
    """
    state = getattr(model, ATTR, None)
    if state is None:
        return ((n, m) for n, m in model.named_modules() if is_wrapper(m))
    cached = getattr(state, "_wrappers", None)
    if cached is None or cached[0] != state.version:
        cached = (state.version, [(n, m) for n, m in model.named_modules() if is_wrapper(m)])
        state._wrappers = cached
    return iter(cached[1])
