"""Turning a device name from a config or the command line into a torch.device that exists here."""

import re

import torch

from lorakit.core.errors import ConfigError

_NAME = re.compile(r"auto|cpu|mps|cuda(?::(\d+))?")


def resolve_device(name: str | None) -> torch.device:
    """None or `auto` -> cuda if available else cpu; `cpu`, `mps`, `cuda`, `cuda:N` -> checked to exist."""
    text = (name or "auto").strip().lower()
    match = _NAME.fullmatch(text)
    if match is None:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r} is not available on this machine; use auto or cpu")
        return torch.device("mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"device {name!r}: no CUDA GPU is available here; use auto or cpu")
    index = match.group(1)
    if index is not None and int(index) >= count:
        raise ConfigError(
            f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
            "pick one of those, or use auto"
        )
    return torch.device(text)
