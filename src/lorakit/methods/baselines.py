"""The paper's non-adapter baselines (Hu et al., 2021, section 5.1): FT, FT-top2 and BitFit."""

from __future__ import annotations

from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.core.errors import ConfigError
from lorakit.methods.blocks import blocks, head_names, train_head
from lorakit.methods.export import Export, full_export, trained_export
from lorakit.methods.options import MethodOptions


def full(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
    """Every parameter trains (FT); saved as a whole transformers model."""
    model.requires_grad_(True)
    return full_export()


def ft_top2(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
    """Only the last two transformer blocks (and a classification head) train (FT^Top2, Li & Liang, 2021)."""
    model.requires_grad_(False)
    for block in blocks(model)[-2:]:
        block.requires_grad_(True)
    train_head(model)
    return trained_export("ft-top2", lora, options)


def bitfit(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
    """Only the bias vectors (and a classification head) train (BitFit, Zaken et al., 2021)."""
    heads = tuple(f"{h}." for h in head_names(model))
    biases = [p for n, p in model.named_parameters() if n.endswith("bias") and not n.startswith(heads)]
    if not biases:
        raise ConfigError(
            f"BitFit trains only bias vectors, and {type(model).__name__} has none (Llama-style models such as "
            "SmolLM2 use bias-free linear layers and RMSNorm). Choose another method, e.g. lora or adapter-h, or "
            "a model with biases (GPT-2, BERT)"
        )
    model.requires_grad_(False)
    for p in biases:
        p.requires_grad_(True)
    train_head(model)
    return trained_export("bitfit", lora, options)
