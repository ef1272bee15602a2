"""The cache: where it lives, and that a directory appears in it complete or not at all."""

import json
import os
import time
from pathlib import Path

import pytest

from lorakit.models import builtin, cache_root
from lorakit.models import gguf as gguf_module
from lorakit.models.cache import STALE_TEMP_SECONDS, write_atomically


def test_cache_root_prefers_lorakit_cache_then_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("LORAKIT_CACHE", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "lorakit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lorakit"
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_a_failed_write_leaves_neither_the_directory_nor_a_temporary_one(tmp_path: Path) -> None:
    def write_half_then_fail(directory: Path) -> None:
        (directory / "config.json").write_text("{}")
        raise KeyboardInterrupt  # what Ctrl-C during the 20 s dequantization raises

    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "model", write_half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_the_directory_is_absent_while_it_is_being_written(tmp_path: Path) -> None:
    final = tmp_path / "model"

    def write(directory: Path) -> None:
        assert not final.exists()
        assert directory.parent == final.parent and directory.name.startswith(".model.tmp-")
        (directory / "weights").write_text("complete")

    assert write_atomically(final, write) == final
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (final / "weights").read_text() == "complete"


def test_a_stale_copy_is_replaced_whole(tmp_path: Path) -> None:
    final = tmp_path / "model"
    write_atomically(final, lambda d: (d / "old-only").write_text("stale"))
    write_atomically(final, lambda d: (d / "weights").write_text("fresh"))
    assert sorted(p.name for p in final.iterdir()) == ["weights"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_copy_a_concurrent_writer_put_in_place_first_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "model"
    real_rename = Path.rename

    def rename_just_after_the_other_writer(self: Path, target: Path) -> Path:
        if Path(target) == final:
            final.mkdir()
            (final / "weights").write_text("theirs")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_just_after_the_other_writer)
    write_atomically(final, lambda d: (d / "weights").write_text("ours"))
    assert (final / "weights").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_temporary_directories_older_than_a_day_are_removed_and_younger_ones_kept(tmp_path: Path) -> None:
    dead, live = tmp_path / ".model.tmp-killed", tmp_path / ".model.tmp-writing"
    dead.mkdir()
    live.mkdir()
    long_ago = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(dead, (long_ago, long_ago))
    write_atomically(tmp_path / "model", lambda d: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.tmp-writing", "model"]


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
