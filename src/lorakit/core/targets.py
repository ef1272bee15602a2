"""Which modules an adapter wraps: names/suffixes, a regex, "all-linear", and a layer-index filter."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from torch import nn

from lorakit.core.config import ALL_LINEAR
from lorakit.core.errors import TargetError
from lorakit.core.state import is_wrapper

SUPPORTED = ("Linear", "Conv1D", "Embedding", "Conv2d")
# Block containers in the transformers models we know: Llama/Mistral/BERT ("layers"/"layer"), GPT-2 ("h").
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


def kind_of(module: nn.Module) -> str | None:
    """The adaptable kind of a module ("Linear", "Conv1D", "Embedding", "Conv2d"), or None."""
    if isinstance(module, nn.Linear):
        return "Linear"
    if isinstance(module, nn.Embedding):
        return "Embedding"
    if isinstance(module, nn.Conv2d):
        return "Conv2d"
    # transformers' GPT-2 Conv1D is a Linear with the weight stored (in, out); matched by shape so that core/
    # never imports transformers.
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None:
        return "Conv1D"
    return None


def layer_index(name: str) -> int | None:
    """The transformer block index in a module path (`model.layers.3.self_attn.q_proj` -> 3), or None."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def matches(name: str, targets: str | tuple[str, ...] | frozenset[str]) -> bool:
    """PEFT's rule: a tuple matches a name equal to an entry or ending in `.entry`; a string is a full regex."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    # Checking the name's few dotted suffixes against a set keeps this O(depth), not O(len(targets)): loading an
    # adapter passes every adapted module path as a target.
    wanted = targets if isinstance(targets, frozenset) else frozenset(targets)
    parts = name.split(".")
    return any(".".join(parts[i:]) in wanted for i in range(len(parts)))


def plain_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """named_modules() as in the original model: a lorakit wrapper shows under its own name, its insides hidden."""
    hidden = None  # named_modules() is pre-order, so a wrapper's insides directly follow it
    for name, module in model.named_modules():
        if hidden is not None and name.startswith(hidden):
            continue
        yield name, module
        if is_wrapper(module):
            hidden = name + "."


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the output projection(s) that "all-linear" leaves alone (lm_head and tied outputs)."""
    out = {"lm_head"}
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is not None:
        out |= {n for n, m in model.named_modules() if m is head}
    return out


def find_targets(
    model: nn.Module, targets: str | tuple[str, ...], layers: tuple[int, ...] | None = None
) -> list[tuple[str, str]]:
    """(name, kind) of every module the targets select; raises TargetError listing what exists if none match."""
    heads = output_head_names(model)
    if not isinstance(targets, str):
        targets = frozenset(targets)
    found: list[tuple[str, str]] = []
    unsupported: list[str] = []
    for name, module in plain_modules(model):
        if not name:
            continue
        kind = kind_of(module) or _wrapped_kind(module)
        if targets == ALL_LINEAR:
            hit = kind in ("Linear", "Conv1D") and name not in heads
        else:
            hit = matches(name, targets)
        if not hit or (layers is not None and layer_index(name) not in layers):
            continue
        if kind is None:
            unsupported.append(f"{name} ({type(module).__name__})")
        else:
            found.append((name, kind))
    if unsupported:
        raise TargetError(
            f"targets {_show(targets)} matched modules lorakit cannot adapt: {', '.join(unsupported[:8])}"
            f"{' ...' if len(unsupported) > 8 else ''}. lorakit adapts {', '.join(SUPPORTED)} modules; "
            f"target the projections inside instead. Adaptable modules here: {describe(model)}"
        )
    if not found:
        where = "" if layers is None else f" in layers {list(layers)}"
        raise TargetError(
            f"targets {_show(targets)} matched no module{where}. Adaptable modules here (name suffix: type x count): "
            f"{describe(model)}. Use those suffixes, a regular expression string, or 'all-linear'."
        )
    return found


def describe(model: nn.Module) -> str:
    """A short listing of adaptable module suffixes with their types and counts."""
    counts: Counter[tuple[str, str]] = Counter()
    for name, module in plain_modules(model):
        kind = kind_of(module) or _wrapped_kind(module)
        if name and kind:
            counts[(name.rsplit(".", 1)[-1], kind)] += 1
    return ", ".join(f"{s}: {k} x{n}" for (s, k), n in sorted(counts.items())) or "(none)"


def _wrapped_kind(module: nn.Module) -> str | None:
    base = getattr(module, "base_layer", None)
    return kind_of(base) if base is not None and is_wrapper(module) else None


def _show(targets: str | frozenset[str]) -> str:
    return repr(targets) if isinstance(targets, str) else repr(tuple(sorted(targets)))
