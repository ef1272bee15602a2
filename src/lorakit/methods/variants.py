"""LoRA variants: rsLoRA, PiSSA, DoRA, and LoRA combined with a prefix (Hu et al., 2021, Appendix E).

- rslora: scaling alpha/√r instead of alpha/r (Kalajdzievski, 2023); a LoraConfig switch.
- pissa: A and B start from the top-r SVD of W and W keeps the residual (Meng et al., 2024); a LoraConfig switch.
- dora: W' = m ⊙ (W + ΔW) / ‖W + ΔW‖_row with a trainable magnitude m (out,), initialized to ‖W‖_row
  (Liu et al., 2024). ‖·‖_row is the L2 norm of each output row of the (out x in) weight, treated as a constant
  in backward as in DoRA's section 4.3 (and PEFT). Built outside core as a forward hook on each LoRA layer:
  y = b + (m / ‖W + ΔW‖) ⊙ (y_lora - b), where y_lora = W·x + b + ΔW·x is the LoRA layer's own output.
- lora+prefix: LoRA plus a PreEmbed prefix (the paper's LoRA+PrefixEmbed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lorakit.core.errors import MergeError
from lorakit.core.inject import inject, wrappers
from lorakit.core.merge import delta_weight
from lorakit.methods.blocks import head_names
from lorakit.methods.options import DEFAULT, MethodOptions, method_info, trained_export
from lorakit.methods.prefix import ATTRIBUTE as PREFIX
from lorakit.methods.prefix import initial_activations, insert_prefix
from lorakit.train.methods import Export

if TYPE_CHECKING:
    from lorakit.train.config import RunConfig

MAGNITUDE = "lorakit_magnitude"


def _lora_config(model: nn.Module, config: RunConfig, **changes: object):
    """config.lora with `changes`, and a sequence-classification head added to modules_to_save."""
    heads = tuple(h for h in head_names(model) if h not in config.lora.modules_to_save)
    return dataclasses.replace(config.lora, modules_to_save=config.lora.modules_to_save + heads, **changes)


def lora_export(method: str, options: MethodOptions, config: RunConfig) -> Export:
    """Adapter 'default' in PEFT's LoRA format, plus lorakit_method.json naming the variant."""
    from lorakit.core.io import save_adapter
    from lorakit.methods.files import save_trained

    info = method_info(method, options, config)

    def write(model: nn.Module, directory: Path) -> None:
        save_adapter(model, directory, "default")
        save_trained(model, directory, info, skip=("",))  # the method file only; the tensors are above

    return Export("adapter", write)


def lora(model: nn.Module, config: RunConfig, options: MethodOptions = DEFAULT) -> Export:
    """Plain LoRA per config.lora (a classification head trains in full via modules_to_save)."""
    inject(model, _lora_config(model, config), "default")
    return lora_export("lora", options, config)


def rslora(model: nn.Module, config: RunConfig, options: MethodOptions = DEFAULT) -> Export:
    """LoRA scaled by alpha/√r."""
    inject(model, _lora_config(model, config, rslora=True), "default")
    return lora_export("rslora", options, config)


def pissa(model: nn.Module, config: RunConfig, options: MethodOptions = DEFAULT) -> Export:
    """LoRA initialized from the principal singular vectors of W."""
    inject(model, _lora_config(model, config, init="pissa"), "default")
    return lora_export("pissa", options, config)


def _dora_hook(layer: nn.Module, inputs: tuple, y: torch.Tensor) -> torch.Tensor:
    if layer.merged:
        raise MergeError("DoRA layers cannot run merged by lorakit.merge (it ignores the magnitude); unmerge")
    name = layer.active_name()
    if name is None:
        return y
    with torch.no_grad():  # the norm is a constant in backward (DoRA, section 4.3)
        w = layer.weight_2d() + delta_weight(layer, name)
        norm = w.norm(dim=0 if layer.transposed else 1)  # (out,)
    scale = (getattr(layer, MAGNITUDE) / norm).to(y.dtype)
    bias = layer.bias
    if bias is None:
        return y * scale
    return (y - bias) * scale + bias


def add_magnitudes(model: nn.Module) -> list[nn.Parameter]:
    """Give every LoRA layer a DoRA magnitude m = ‖W‖_row (so the model starts at the base output)."""
    added = []
    for _, layer in wrappers(model):
        if not hasattr(layer, "lora_A"):  # modules_to_save copies have no weight to decompose
            continue
        w = layer.weight_2d()
        m = nn.Parameter(w.norm(dim=0 if layer.transposed else 1).detach().clone())
        layer.register_parameter(MAGNITUDE, m)
        layer.register_forward_hook(_dora_hook)
        added.append(m)
    return added


def dora(model: nn.Module, config: RunConfig, options: MethodOptions = DEFAULT) -> Export:
    """Weight-decomposed LoRA; saved as lorakit's trained tensors (core's PEFT writer has no DoRA magnitudes)."""
    inject(model, _lora_config(model, config), "default")
    for m in add_magnitudes(model):
        m.requires_grad_(True)
    return trained_export("dora", options, config)


def lora_prefix(model: nn.Module, config: RunConfig, options: MethodOptions = DEFAULT) -> Export:
    """LoRA + PreEmbed: the LoRA adapter in PEFT's LoRA format, the prompt in PEFT's PROMPT_TUNING format under
    prompt/."""
    from lorakit.core.io import save_adapter
    from lorakit.methods.files import save_prompt, save_trained

    activations = initial_activations(model, options.prefix_length, "normal")
    inject(model, _lora_config(model, config), "default")
    insert_prefix(model, activations).requires_grad_(True)
    info = method_info("lora+prefix", options, config)

    def write(model: nn.Module, directory: Path) -> None:
        save_adapter(model, directory, "default")
        save_prompt(model, Path(directory) / "prompt", getattr(model, PREFIX).activations[0], head=False)
        save_trained(model, directory, info, skip=("",))  # the method file only; the tensors are above

    return Export("adapter", write)
