"""lorakit's cache directory, and writing a directory into it all at once or not at all."""

import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lorakit.core.paths import cache_root

__all__ = ["cache_root", "write_atomically"]

STALE_TEMP_SECONDS = 24 * 3600
"""A temporary directory older than this was left by a killed writer, not by one still writing."""


def write_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a fresh directory next to `final`, then rename it to `final`.

    A reader therefore sees either no `final` or a complete one: an exception in `write` removes the
    temporary directory, and a killed process leaves only a hidden `.{name}.tmp-*` that nothing reads
    and a later write removes once it is a day old. An existing `final` (a stale copy the caller chose
    to replace) is moved aside first and then deleted. If a concurrent writer renames its copy into
    place between those two renames, its copy is kept and ours is discarded: both are complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    _remove_stale(final.parent, prefix)
    # mkdir rather than tempfile.mkdtemp: mkdtemp's mode 0700 would make a shared cache unreadable to
    # everyone else, while mkdir honours the umask.
    tmp = final.with_name(f"{prefix}{uuid.uuid4().hex}")
    tmp.mkdir()
    old = final.with_name(f"{prefix}old-{uuid.uuid4().hex}")
    try:
        write(tmp)
        try:
            final.rename(old)
        except FileNotFoundError:
            pass
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


def _remove_stale(parent: Path, prefix: str) -> None:
    cutoff = time.time() - STALE_TEMP_SECONDS
    for leftover in parent.glob(prefix + "*"):
        try:
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:
            pass  # another process removed it between glob and stat
