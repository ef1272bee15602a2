"""LoRA variants: rsLoRA, PiSSA, DoRA, and LoRA combined with a prefix (Hu et al., 2021, Appendix E).

- rslora: scaling alpha/√r instead of alpha/r (Kalajdzievski, 2023); a LoraConfig switch.
- pissa: A and B start from the top-r SVD of W and W keeps the residual (Meng et al., 2024); a LoraConfig switch.
- dora: W' = m ⊙ (W + ΔW) / ‖W + ΔW‖_row with a trainable magnitude m (out,), initialized to ‖W + ΔW‖_row, that is
  ‖W‖_row as B starts at zero (Liu et al., 2024, eq. 5). ‖·‖_row is the L2 norm of each output row of the (out x in)
  weight, a constant in backward (DoRA, section 4.3). Built outside core as a forward hook on each LoRA layer,
  with c = m / ‖W + ΔW‖ (out,): y = b + c ⊙ (y_lora - b), where y_lora = W·x + b + ΔW·x is the layer's own output.
  With LoRA dropout in training, the dropped-out input x_d feeds the LoRA path and the magnitude's correction of the
  base path, as in PEFT and DoRA's reference code: y = W·x + b + (c - 1) ⊙ W·x_d + c ⊙ ΔW·x_d. Saved in PEFT's
  DoRA format (core/io). core's merge folds it into W as PEFT does (W' = c ⊙ (W + ΔW)); a mixed-adapter batch
  and a weighted combination refuse it.
- lora+prefix: LoRA plus a PreEmbed prefix (the paper's LoRA+PrefixEmbed).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterError, ConfigError, MergeError
from lorakit.core.inject import inject
from lorakit.core.layers import MAGNITUDE, LoraLinear, apply_delta
from lorakit.core.merge import row_norm
from lorakit.core.state import wrappers
from lorakit.methods.blocks import head_names
from lorakit.methods.export import Export, method_info
from lorakit.methods.options import MethodOptions
from lorakit.methods.prefix import ATTRIBUTE as PREFIX
from lorakit.methods.prefix import initial_activations, insert_prefix


def _lora_config(model: nn.Module, lora: LoraConfig, **changes: object) -> LoraConfig:
    """`lora` with `changes`, and a sequence-classification head added to modules_to_save: the head starts random,
    so every method must train it."""
    heads = tuple(h for h in head_names(model) if h not in lora.modules_to_save)
    return dataclasses.replace(lora, modules_to_save=lora.modules_to_save + heads, **changes)


def lora_export(info: dict) -> Export:
    """Adapter 'default' in PEFT's LoRA format (DoRA's too), plus lorakit_method.json naming the variant."""
    from lorakit.core.io import save_adapter
    from lorakit.methods.files import save_trained

    def write(model: nn.Module, directory: Path) -> None:
        save_adapter(model, directory, "default")
        save_trained(model, directory, info, skip=("",))  # the method file only; the tensors are above

    return Export("adapter", write)


def lora(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
    """Plain LoRA per `lora` (a classification head trains in full via modules_to_save)."""
    inject(model, _lora_config(model, lora), "default")
    return lora_export(method_info("lora", lora, options))


def rslora(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
    """LoRA scaled by alpha/√r."""
    inject(model, _lora_config(model, lora, rslora=True), "default")
    return lora_export(method_info("rslora", lora, options))


def pissa(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
    """LoRA initialized from the principal singular vectors of W."""
    inject(model, _lora_config(model, lora, init="pissa"), "default")
    return lora_export(method_info("pissa", lora, options))


def dora(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
    """Weight-decomposed LoRA; saved in PEFT's DoRA format."""
    inject(model, _lora_config(model, lora), "default")
    for _, layer in _dora_layers(model, "default"):
        _add_magnitude(layer, "default", row_norm(layer, "default")).requires_grad_(True)
    return lora_export(method_info("dora", lora, options))


def load_dora(model: nn.Module, directory: str | os.PathLike, name: str | None = None) -> str:
    """Load a DoRA adapter directory (PEFT's `LoraConfig(use_dora=True)` or lorakit's dora method) onto `model` as
    adapter `name` (default: as lorakit.load_adapter picks it); returns the name. Nothing trains afterwards."""
    from lorakit.core.io import load_dora_adapter

    name, magnitudes = load_dora_adapter(model, directory, name)  # checked (layer kinds, shapes) before loading
    for path, m in magnitudes.items():
        layer = model.get_submodule(path)
        _add_magnitude(layer, name, m.to(layer.weight.dtype))
    return name


def _dora_layers(model: nn.Module, name: str) -> list[tuple[str, LoraLinear]]:
    """The layers adapter `name` adapts; ConfigError unless all are Linear or Conv1D (DoRA's row norm needs W)."""
    layers = [(p, m) for p, m in wrappers(model) if name in getattr(m, "lora_A", {})]
    other = [f"{p} ({type(m.base_layer).__name__})" for p, m in layers if not isinstance(m, LoraLinear)]
    if other:
        raise ConfigError(f"dora adapts Linear and Conv1D layers only; leave {', '.join(other)} out of lora.targets")
    return layers


def _add_magnitude(layer: LoraLinear, name: str, m: torch.Tensor) -> nn.Parameter:
    """Register m (out,) as adapter `name`'s DoRA magnitude on `layer` (frozen), hooking the layer on first use."""
    if not hasattr(layer, MAGNITUDE):
        layer.add_module(MAGNITUDE, nn.ParameterDict())
        layer.register_forward_hook(_dora_hook)
    getattr(layer, MAGNITUDE)[name] = nn.Parameter(m.detach().clone(), requires_grad=False)
    return getattr(layer, MAGNITUDE)[name]


def _dora_hook(layer: LoraLinear, inputs: tuple, y: torch.Tensor) -> torch.Tensor:
    magnitudes = getattr(layer, MAGNITUDE)
    if layer.state.rows is not None and not layer.state.disabled:
        raise AdapterError("DoRA adapters cannot run in a mixed-adapter batch (per-row adapters); run them alone")
    name = layer.active_name()
    if name not in magnitudes:
        return y
    if layer.merged:  # another adapter merged into W would enter the norm
        raise MergeError(f"adapters {layer.merged} are merged into a layer of DoRA adapter {name!r}; unmerge them")
    scale = magnitudes[name] / row_norm(layer, name)  # c, (out,)
    bias = layer.bias
    p = layer.dropout[name]
    if not (p and layer.training):
        c = scale.to(y.dtype)
        return y * c if bias is None else (y - bias) * c + bias
    # y drew its own dropout mask for the LoRA path only, and DoRA's (c - 1) ⊙ W·x_d needs the same x_d, so this
    # case discards y and starts again from the input: W·x + b + [(c - 1) ⊙ W + c ⊙ ΔW]·x_d.
    x = inputs[0]
    x_d = F.dropout(x, p, training=True)
    w = layer.weight_2d()
    delta = torch.zeros_like(w)
    apply_delta(delta, layer.delta_parts(name), layer.scaling[name])  # ΔW with its gradient to A and B
    c = scale[None, :] if layer.transposed else scale[:, None]  # scales output rows of the stored layout
    update = c * (w + delta) - w
    return layer.base_layer(x) + (x_d @ update if layer.transposed else F.linear(x_d, update)).to(y.dtype)


def lora_prefix(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
    """LoRA + PreEmbed: the LoRA adapter in PEFT's LoRA format, the prompt in PEFT's PROMPT_TUNING format under
    prompt/."""
    from lorakit.core.io import save_adapter
    from lorakit.methods.files import save_prompt, save_trained

    activations = initial_activations(model, options.prefix_length, "normal")
    inject(model, _lora_config(model, lora), "default")
    insert_prefix(model, activations).requires_grad_(True)
    info = method_info("lora+prefix", lora, options)

    def write(model: nn.Module, directory: Path) -> None:
        save_adapter(model, directory, "default")
        save_prompt(model, Path(directory) / "prompt", getattr(model, PREFIX).activations[0], head=False)
        save_trained(model, directory, info, skip=("",))  # the method file only; the tensors are above

    return Export("adapter", write)
