"""Writing a file or a whole directory so that a reader sees the old version or the new one, never a half.

Every file lorakit writes (adapters, checkpoints, converted models, reports, compiled kernels) goes through here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

STALE_TEMP_SECONDS = 24 * 3600
"""A temporary directory older than this was left by a killed writer, not by one still writing."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes to `path` via a temp file in the same directory and os.replace, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a fresh directory next to `final`, then rename it to `final`.

    A reader therefore sees either no `final` or a complete one: an exception in `write` removes the
    temporary directory, and a killed process leaves only a hidden `.{name}.tmp-*` that nothing reads
    and a later write removes once it is a day old. An existing `final` (a stale copy the caller chose
    to replace) is moved aside first and deleted only once the new one is in place. If a concurrent
    writer renames its copy into place between those two renames, its copy is kept and ours is
    discarded: both are complete.
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
