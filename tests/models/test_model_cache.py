"""The cache: where it lives, and a converted model rebuilt only when its source changes."""

import json
from pathlib import Path

import pytest

from lorakit.models import builtin, cache_root
from lorakit.models import gguf as gguf_module


def test_cache_root_prefers_lorakit_cache_then_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("LORAKIT_CACHE", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "lorakit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lorakit"
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_the_gguf_cache_is_reused_while_its_stamp_matches_and_rebuilt_when_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = builtin("smollm2-135m")
    assert entry is not None
    stamp = {"format": 1, "version": "1"}
    builds: list[Path] = []

    def fake_dequantize(_: object, out: Path, stamp: dict[str, object]) -> None:
        builds.append(out)
        (out / gguf_module.STAMP).write_text(json.dumps(stamp))

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(gguf_module, "_stamp", lambda _: stamp)
    monkeypatch.setattr(gguf_module, "_dequantize", fake_dequantize)
    first = gguf_module.cached_gguf(entry)
    assert first == tmp_path / "models" / "smollm2-135m"
    assert gguf_module.cached_gguf(entry) == first and len(builds) == 1
    stamp["version"] = "2"
    assert gguf_module.cached_gguf(entry) == first and len(builds) == 2
    assert json.loads((first / gguf_module.STAMP).read_text())["version"] == "2"
