"""The adapters a server knows: their files, which are resident on the model, a memory budget, LRU eviction.

Every load of a name gets a new version and lives on the model as `name@vN`, so a reload never reuses anything
built for the old weights (the core rebuilds its stacked tables whenever adapters come or go), and requests
already running on the old version finish on it. Only idle adapters (no running request) are ever evicted;
an evicted adapter is reloaded from disk on its next request.

Methods that change the model must run on the engine's thread; `names` and `contains` may be called anywhere.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

import lorakit
from lorakit.core.errors import AdapterFileError
from lorakit.core.io.files import CONFIG_FILE, WEIGHTS_FILE, read_adapter


class PoolError(AdapterFileError):
    """An adapter path is refused, or an adapter does not fit the memory budget."""


@dataclass
class Entry:
    """One named adapter: where it lives on disk and whether (as which version) it is on the model now."""

    name: str
    path: Path
    version: int
    nbytes: int
    resident: bool = False
    last_used: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> str:
        """The adapter's name on the model: a new one for every load of this name."""
        return f"{self.name}@v{self.version}"


class AdapterPool:
    """Named adapters for one base model, at most `budget_bytes` of adapter weights resident at once."""

    def __init__(self, model: nn.Module, root: str | os.PathLike | None = None, budget_bytes: int | None = None):
        self.model = model
        self.root = Path(root).resolve() if root is not None else None
        self.budget_bytes = budget_bytes
        self.entries: dict[str, Entry] = {}
        self.retired: dict[str, int] = {}
        """Model keys of replaced or unloaded versions still in use -> their size; deleted when idle."""
        self.in_use: dict[str, int] = {}
        """Model key -> number of running requests using it."""
        self.loads = 0
        self.evictions = 0
        self._versions = itertools.count(1)
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return list(self.entries)

    def contains(self, name: str) -> bool:
        with self._lock:
            return name in self.entries

    def resident_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values() if e.resident) + sum(self.retired.values())

    def checked_path(self, path: str | os.PathLike) -> Path:
        """`path` (relative paths are under the root) resolved, refusing anything that leads outside the root."""
        if self.root is None:
            raise PoolError("loading adapters at runtime is off: start the server with --adapter-root DIR")
        raw = Path(path)
        if ".." in raw.parts:
            raise PoolError(f"lora_path {str(path)!r} contains '..'; give a path inside the adapter root {self.root}")
        full = (raw if raw.is_absolute() else self.root / raw).resolve()
        inside = [full] + [(full / f).resolve() for f in (CONFIG_FILE, WEIGHTS_FILE)]
        if any(not p.is_relative_to(self.root) for p in inside):
            raise PoolError(
                f"lora_path {str(path)!r} leads outside the adapter root {self.root} (through a symlink or an "
                f"absolute path); copy the adapter under the root"
            )
        return full

    def add(self, name: str, path: str | os.PathLike, trusted: bool = False) -> Entry:
        """Load (or reload) adapter `name` from `path` onto the model; the old version, if any, is retired.

        Paths are checked against the adapter root unless `trusted` (adapters named on the command line).
        A refused load (bad files, another base model, wrong shapes) raises and changes nothing.
        """
        if not name or "." in name or "@" in name:
            raise PoolError(f"adapter name {name!r} must be non-empty and contain neither '.' nor '@'")
        full = Path(path).resolve() if trusted else self.checked_path(path)
        read_adapter(full)  # every file problem is reported before anything else happens
        entry = Entry(name, full, next(self._versions), _size_of(full))
        self._make_room(entry.nbytes, keep=name)
        lorakit.load_adapter(self.model, full, name=entry.key)
        self.loads += 1
        entry.resident = True
        old = self.entries.get(name)
        with self._lock:
            self.entries[name] = entry
        if old is not None:
            self._drop(old)
        return entry

    def remove(self, name: str) -> None:
        """Forget adapter `name`; running requests on it finish first, new ones are refused."""
        with self._lock:
            entry = self.entries.pop(name)
        self._drop(entry)

    def acquire(self, name: str) -> str | None:
        """The model key for one new request on `name`, loading it if evicted; None if it cannot fit yet."""
        entry = self.entries[name]
        if not entry.resident:
            if not self._make_room(entry.nbytes, keep=name, wait=True):
                return None
            lorakit.load_adapter(self.model, entry.path, name=entry.key)
            self.loads += 1
            entry.resident = True
        entry.last_used = time.monotonic()
        self.in_use[entry.key] = self.in_use.get(entry.key, 0) + 1
        return entry.key

    def release(self, key: str) -> None:
        """One request on model key `key` ended; a retired version is deleted when its last request ends."""
        self.in_use[key] -= 1
        if self.in_use[key] == 0:
            del self.in_use[key]
            if key in self.retired:
                del self.retired[key]
                lorakit.delete_adapter(self.model, key)

    def _drop(self, entry: Entry) -> None:
        if not entry.resident:
            return
        if entry.key in self.in_use:
            self.retired[entry.key] = entry.nbytes
        else:
            lorakit.delete_adapter(self.model, entry.key)
        entry.resident = False

    def _make_room(self, nbytes: int, keep: str, wait: bool = False) -> bool:
        """Evict idle adapters, least recently used first, until `nbytes` more fit the budget.

        If busy adapters fill the budget: with wait, report False (the request waits); without, raise.
        """
        if self.budget_bytes is None:
            return True
        if nbytes > self.budget_bytes:
            raise PoolError(
                f"adapter needs {nbytes / 2**20:.1f} MiB but the adapter memory budget is "
                f"{self.budget_bytes / 2**20:.1f} MiB; raise --adapter-memory"
            )
        idle = sorted((e for e in self.entries.values() if e.resident and e.key not in self.in_use and e.name != keep),
                      key=lambda e: e.last_used)
        while self.resident_bytes() + nbytes > self.budget_bytes and idle:
            victim = idle.pop(0)
            lorakit.delete_adapter(self.model, victim.key)
            victim.resident = False
            self.evictions += 1
        if self.resident_bytes() + nbytes <= self.budget_bytes:
            return True
        if wait:
            return False
        raise PoolError(
            f"adapter memory budget ({self.budget_bytes / 2**20:.1f} MiB) is full of adapters serving requests; "
            f"retry when they finish or raise --adapter-memory"
        )


def _size_of(directory: Path) -> int:
    """Bytes the adapter's weights take in memory (its safetensors file, whose header is negligible)."""
    return (directory / WEIGHTS_FILE).stat().st_size
