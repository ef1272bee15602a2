"""Every method in one table: what it is, how it prepares a model, how a saved one loads back, and its defaults.

Train, evaluate, compare and the command line read a method's facts here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.core.errors import ConfigError
from lorakit.methods import adapters, baselines, prefix, variants
from lorakit.methods.export import Export
from lorakit.methods.options import MethodOptions

Prepare = Callable[[nn.Module, LoraConfig, MethodOptions], Export]
"""Prepares `model` in place for training (what trains, what is added) and returns how to save it."""
Family = Literal["full", "partial", "adapter", "prefix", "lora"]


@dataclass(frozen=True)
class MethodSpec:
    """One fine-tuning method (Hu et al., 2021, section 5.1 and Appendix E)."""

    name: str
    family: Family
    """lora: a LoRA update sized by lora.rank (the LoRA family); full/partial: trains existing weights; adapter
    and prefix: adds modules sized by method_options."""
    prepare: Prepare
    lr: float
    """Default peak learning rate in a comparison: each family needs its own (full FT diverges at LoRA's rates,
    prompts barely move at them)."""
    sized_by: tuple[str, ...] = ()
    """The method_options fields it reads."""
    mergeable: bool = False
    """Its trained update folds into W (core's merge): a LoRA ΔW, or DoRA's m ⊙ (W + ΔW)/‖W + ΔW‖."""
    weights_only: bool = False
    """It changes existing weights only, so the trained model runs exactly like the base (no added latency)."""
    load: Callable[[nn.Module, Path], None] | None = None
    """Puts a saved directory's modules back on a fresh base before its trained tensors load; None rebuilds them
    with `prepare` from the saved options."""


def _load_lora(model: nn.Module, directory: Path) -> None:
    from lorakit.core.io import load_adapter

    load_adapter(model, directory)


def _load_lora_prefix(model: nn.Module, directory: Path) -> None:
    from lorakit.methods.files import read_prompt

    _load_lora(model, directory)
    prefix.insert_prefix(model, read_prompt(directory / "prompt")[None])


def _load_prompt(model: nn.Module, directory: Path) -> None:
    from lorakit.methods.files import read_prompt

    prefix.insert_prefix(model, read_prompt(directory)[None])


def _load_dora(model: nn.Module, directory: Path) -> None:
    variants.load_dora(model, directory)


METHODS: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("full", "full", baselines.full, lr=5e-5, weights_only=True),
    MethodSpec("ft-top2", "partial", baselines.ft_top2, lr=1e-4, weights_only=True),
    MethodSpec("bitfit", "partial", baselines.bitfit, lr=1e-3, weights_only=True),
    MethodSpec("adapter-h", "adapter", adapters.adapter_h, lr=1e-3, sized_by=("bottleneck",)),
    MethodSpec("adapter-l", "adapter", adapters.adapter_l, lr=1e-3, sized_by=("bottleneck",)),
    MethodSpec("prefix-embed", "prefix", prefix.prefix_embed, lr=1e-2, sized_by=("prefix_length",),
               load=_load_prompt),
    MethodSpec("prefix-layer", "prefix", prefix.prefix_layer, lr=5e-3, sized_by=("prefix_length",)),
    MethodSpec("prompt-tuning", "prefix", prefix.prompt_tuning, lr=1e-2, sized_by=("prefix_length",),
               load=_load_prompt),
    MethodSpec("lora", "lora", variants.lora, lr=5e-4, mergeable=True, load=_load_lora),
    MethodSpec("rslora", "lora", variants.rslora, lr=5e-4, mergeable=True, load=_load_lora),
    MethodSpec("dora", "lora", variants.dora, lr=5e-4, mergeable=True, load=_load_dora),
    MethodSpec("pissa", "lora", variants.pissa, lr=5e-4, mergeable=True, load=_load_lora),
    MethodSpec("lora+prefix", "lora", variants.lora_prefix, lr=5e-4, sized_by=("prefix_length",), mergeable=True,
               load=_load_lora_prefix),
)}
"""Method name (`--method`, `lorakit compare --methods`) -> its spec."""


def method(name: str) -> MethodSpec:
    """The spec of method `name`; ConfigError listing the known ones."""
    check_names([name])
    return METHODS[name]


def check_names(names: list[str]) -> None:
    """Raise ConfigError naming every unknown method and listing the known ones."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"known methods are {', '.join(METHODS)}")


def unused_options(name: str, options: MethodOptions) -> list[str]:
    """method_options changed from their defaults for a method that never reads them (a typo'd method, or an
    option meant for another run) would be silently ignored; say so instead."""
    defaults = MethodOptions()
    users = {field: [m.name for m in METHODS.values() if field in m.sized_by] for field in MethodOptions.model_fields}
    return [f"method_options.{field} is {getattr(options, field)}, but method {name!r} does not use it (it sizes "
            f"{', '.join(users[field])}); remove it or choose one of those methods"
            for field in MethodOptions.model_fields
            if field not in METHODS[name].sized_by and getattr(options, field) != getattr(defaults, field)]


def load_method(model: nn.Module, directory: str | Path) -> dict:
    """Rebuild a saved method's modules on `model` (a fresh base) and load its trained tensors; returns its info.

    LoRA-family directories load through core's PEFT reader (DoRA through variants.load_dora); prompt methods
    read PEFT PROMPT_TUNING files; the others are rebuilt from their saved options. Afterwards nothing trains.
    """
    from lorakit.methods.files import load_tensors, read_method

    d = Path(directory)
    info, tensors = read_method(d)
    spec = method(info.get("method"))
    if spec.family == "full":
        raise ConfigError(f"{d} is a full fine-tune; load it with lorakit.models.load (it is a model directory)")
    if spec.load is not None:
        spec.load(model, d)
    else:
        spec.prepare(model, LoraConfig.from_dict(info.get("lora", {})), MethodOptions(**info.get("options", {})))
    load_tensors(model, tensors, d)
    model.requires_grad_(False)
    return info
