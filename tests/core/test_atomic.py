"""Atomic writes: a file or a directory appears complete or not at all."""

import os
import time
from pathlib import Path

import pytest

from lorakit.core.atomic import STALE_TEMP_SECONDS, write_atomically


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
