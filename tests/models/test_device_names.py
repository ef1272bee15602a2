"""resolve_device: names -> devices that exist here, and a ConfigError naming the valid choices otherwise."""

import pytest
import torch

from lorakit.core.errors import ConfigError
from lorakit.models import resolve_device


def _pretend_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("name", [None, "auto", "AUTO", " auto "])
def test_auto_picks_cuda_exactly_when_a_gpu_is_available(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _pretend_gpus(monkeypatch, 0)
    assert resolve_device(name) == torch.device("cpu")
    _pretend_gpus(monkeypatch, 1)
    assert resolve_device(name) == torch.device("cuda")


def test_cpu_is_always_available() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_cuda_index_is_accepted_only_below_the_device_count(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_gpus(monkeypatch, 2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_cuda_without_a_gpu_says_to_use_auto_or_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_gpus(monkeypatch, 0)
    with pytest.raises(ConfigError, match="use auto or cpu"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cpu:0", "cuda:", "tpu"])
def test_an_unknown_name_lists_the_valid_ones(name: str) -> None:
    with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N"):
        resolve_device(name)
