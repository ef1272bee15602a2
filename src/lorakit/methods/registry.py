"""Every comparison method by name, with its size options, and loading a saved method back onto a base model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.core.errors import ConfigError
from lorakit.methods import adapters, baselines, prefix, variants
from lorakit.train.config import MethodOptions, RunConfig
from lorakit.train.methods import Method

ALL: dict[str, Method] = {
    "full": baselines.full,
    "ft-top2": baselines.ft_top2,
    "bitfit": baselines.bitfit,
    "adapter-h": adapters.adapter_h,
    "adapter-l": adapters.adapter_l,
    "prefix-embed": prefix.prefix_embed,
    "prefix-layer": prefix.prefix_layer,
    "prompt-tuning": prefix.prompt_tuning,
    "lora": variants.lora,
    "rslora": variants.rslora,
    "dora": variants.dora,
    "pissa": variants.pissa,
    "lora+prefix": variants.lora_prefix,
}
"""Method name -> function(model, run_config) that prepares the model and returns its Export."""

LORA_FAMILY = ("lora", "rslora", "dora", "pissa", "lora+prefix")
"""Methods whose size is LoraConfig.rank (the others size by run_config.method_options)."""


def check_names(names: list[str]) -> None:
    """Raise ConfigError naming every unknown method and listing the known ones."""
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise ConfigError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"known methods are {', '.join(ALL)}")


def load_method(model: nn.Module, directory: str | Path) -> dict:
    """Rebuild a saved method's modules on `model` (a fresh base) and load its trained tensors; returns its info.

    LoRA-family directories load through core's PEFT reader (DoRA through variants.load_dora); prompt methods
    read PEFT PROMPT_TUNING files. Afterwards nothing trains.
    """
    from lorakit.core.io import load_adapter
    from lorakit.methods.files import load_tensors, read_method, read_prompt

    d = Path(directory)
    info, tensors = read_method(d)
    name = info.get("method")
    check_names([name])
    if name == "full":
        raise ConfigError(f"{d} is a full fine-tune; load it with lorakit.models.load (it is a model directory)")
    if name == "dora":
        variants.load_dora(model, d)
    elif name in ("lora", "rslora", "pissa", "lora+prefix"):
        load_adapter(model, d)
        if name == "lora+prefix":
            prompt = read_prompt(d / "prompt")
            prefix.insert_prefix(model, prompt[None])
    elif name in ("prefix-embed", "prompt-tuning"):
        prefix.insert_prefix(model, read_prompt(d)[None])
    else:
        config = RunConfig(method="full", lora=LoraConfig.from_dict(info.get("lora", {})),
                           method_options=MethodOptions(**info.get("options", {})))
        ALL[name](model, config)
    load_tensors(model, tensors, d)
    model.requires_grad_(False)
    return info
