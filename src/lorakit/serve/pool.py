"""The adapters a server knows: their files, which are resident on the model, a memory budget, LRU eviction.

Every load of a name gets a new version and lives on the model as `name@vN`, so a reload never reuses anything
built for the old weights (the core rebuilds its stacked tables whenever adapters come or go), and requests
already running on the old version finish on it. Only idle adapters (no running request) are ever evicted;
an evicted adapter is reloaded from disk on its next request.

Every load (and reload) is checked before a request can use it, so an adapter that loads also runs: no file is
reached through a link out of the adapter root, the config parses, the weights are finite, the scaling bounded,
no trained bias changes the shared base model, and the serving forward can apply it (`check`, the engine's
backend's). A refused load raises a LoraError naming the problem and changes nothing.

Methods that change the model must run on the engine's thread; `names` and `contains` may be called anywhere.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import lorakit
from lorakit.core.errors import AdapterError, AdapterFileError
from lorakit.core.io.files import CONFIG_FILE, LORAKIT_FILE, WEIGHTS_FILE, read_adapter
from lorakit.core.state import wrappers

FILES = (CONFIG_FILE, WEIGHTS_FILE, LORAKIT_FILE, "adapter_model.bin")  # every file loading an adapter opens
MAX_SCALING = 1000.0  # most |alpha / r| (or alpha / sqrt(r)) a served adapter may scale its update by


class PoolError(AdapterFileError):
    """An adapter path is refused, or an adapter does not fit the memory budget, or cannot be served."""


class AdapterNotFound(AdapterError):
    """No adapter of that name is loaded (any more)."""


@dataclass
class Entry:
    """One named adapter: where it lives on disk and whether (as which version) it is on the model now."""

    name: str
    path: Path
    version: int
    nbytes: int
    trusted: bool = False
    """Named on the command line: not confined to the adapter root."""
    resident: bool = False
    last_used: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> str:
        """The adapter's name on the model: a new one for every load of this name."""
        return f"{self.name}@v{self.version}"


class AdapterPool:
    """Named adapters for one base model, at most `budget_bytes` of adapter weights resident at once."""

    def __init__(self, model: nn.Module, root: str | os.PathLike | None = None, budget_bytes: int | None = None,
                 check: Callable[[str], None] | None = None):
        self.model = model
        self.check = check
        """Raises (AdapterError) when the serving forward cannot apply the adapter loaded under a key; the engine
        sets its backend's."""
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
            raise PoolError(f"lora_path {str(path)!r} contains '..'; give a path inside the adapter root")
        full = (raw if raw.is_absolute() else self.root / raw).resolve()
        if not full.is_relative_to(self.root):
            raise PoolError(f"lora_path {str(path)!r} leads outside the adapter root (through a symlink or an "
                            f"absolute path); copy the adapter under the root")
        self._check_links(full, str(path))
        return full

    def _check_links(self, full: Path, shown: str) -> None:
        """Refuse a file of the adapter that a link leads out of the root. Decided from the link alone (realpath
        follows links whether or not their target exists), so the message never tells what lies outside."""
        for name in FILES:
            if not Path(os.path.realpath(full / name)).is_relative_to(self.root):
                raise PoolError(f"{name} of lora_path {shown!r} is a link that leads outside the adapter root; copy "
                                f"the file under the root")

    def add(self, name: str, path: str | os.PathLike, trusted: bool = False) -> Entry:
        """Load (or reload) adapter `name` from `path` onto the model; the old version, if any, is retired.

        Paths are checked against the adapter root unless `trusted` (adapters named on the command line).
        A refused load (bad files, another base model, wrong shapes) raises and changes nothing.
        """
        if not name or "." in name or "@" in name:
            raise PoolError(f"adapter name {name!r} must be non-empty and contain neither '.' nor '@'")
        full = Path(path).resolve() if trusted else self.checked_path(path)
        _read(full)  # every file problem is reported before anything else happens
        entry = Entry(name, full, next(self._versions), _size_of(full), trusted)
        self._make_room(entry.nbytes, keep=name)
        self._install(entry)
        old = self.entries.get(name)
        with self._lock:
            self.entries[name] = entry
        if old is not None:
            self._drop(old)
        return entry

    def remove(self, name: str) -> None:
        """Forget adapter `name`; running requests on it finish first, new ones are refused. AdapterNotFound when
        it is not loaded (as for all but the first of concurrent removes)."""
        with self._lock:
            entry = self.entries.pop(name, None)
        if entry is None:
            raise AdapterNotFound(f"adapter {name!r} is not loaded")
        self._drop(entry)

    def acquire(self, name: str) -> str | None:
        """The model key for one new request on `name`, loading it if evicted (checked again: its files may have
        changed); None if it cannot fit yet."""
        entry = self.entries.get(name)
        if entry is None:
            raise AdapterNotFound(f"adapter {name!r} is not loaded")
        if not entry.resident:
            victims = self._victims(entry.nbytes, keep=name)
            if victims is None:
                return None
            if not entry.trusted:
                self._check_links(entry.path, name)
            _read(entry.path)  # refused: nothing evicted
            self._evict(victims)
            self._install(entry)
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

    def _install(self, entry: Entry) -> None:
        """Load the (read and checked) adapter onto the model under its key, then check what only the loaded
        adapter tells (its scaling per module, whether the serving forward applies it); refused, it is deleted."""
        try:
            lorakit.load_adapter(self.model, entry.path, name=entry.key)
        except lorakit.LoraError:
            raise
        except Exception as e:  # the files changed since they were read, or a config value of an unexpected type
            raise PoolError(f"adapter {entry.name!r} could not be loaded: {_why(e)}") from e
        try:
            for path, module in wrappers(self.model):
                scaling = getattr(module, "scaling", {}).get(entry.key)
                if scaling is not None and not abs(scaling) <= MAX_SCALING:
                    raise PoolError(f"adapter scales its update by {scaling:g} at {path} (lora_alpha / r), beyond "
                                    f"the {MAX_SCALING:g} lorakit serves; fix lora_alpha or r in {CONFIG_FILE}")
            if self.check is not None:
                self.check(entry.key)
        except BaseException:
            lorakit.delete_adapter(self.model, entry.key)
            raise
        self.loads += 1
        entry.resident = True

    def _drop(self, entry: Entry) -> None:
        if not entry.resident:
            return
        if entry.key in self.in_use:
            self.retired[entry.key] = entry.nbytes
        else:
            lorakit.delete_adapter(self.model, entry.key)
        entry.resident = False

    def _make_room(self, nbytes: int, keep: str) -> None:
        """Evict idle adapters, least recently used first, until `nbytes` more fit the budget; raise when busy
        adapters fill it."""
        victims = self._victims(nbytes, keep)
        if victims is None:
            raise PoolError(
                f"adapter memory budget ({self.budget_bytes / 2**20:.1f} MiB) is full of adapters serving requests; "
                f"retry when they finish or raise --adapter-memory"
            )
        self._evict(victims)

    def _victims(self, nbytes: int, keep: str) -> list[Entry] | None:
        """The idle adapters to evict, least recently used first, for `nbytes` more to fit the budget; None when
        they cannot make room (busy adapters fill it)."""
        if self.budget_bytes is None:
            return []
        if nbytes > self.budget_bytes:
            raise PoolError(
                f"adapter needs {nbytes / 2**20:.1f} MiB but the adapter memory budget is "
                f"{self.budget_bytes / 2**20:.1f} MiB; raise --adapter-memory"
            )
        idle = sorted((e for e in self.entries.values() if e.resident and e.key not in self.in_use and e.name != keep),
                      key=lambda e: e.last_used)
        over = self.resident_bytes() + nbytes - self.budget_bytes
        victims = []
        while over > 0 and idle:
            victims.append(idle.pop(0))
            over -= victims[-1].nbytes
        return victims if over <= 0 else None

    def _evict(self, victims: list[Entry]) -> None:
        for victim in victims:
            lorakit.delete_adapter(self.model, victim.key)
            victim.resident = False
            self.evictions += 1


def _read(directory: Path) -> None:
    """Read an adapter directory and refuse what must not be served: unreadable or unparsable files (an invalid
    regular expression in the config included), non-finite weights, trained biases (they would change the base
    model under every request)."""
    try:
        config, _, tensors = read_adapter(directory)
        for pattern in ("rank_pattern", "alpha_pattern"):
            for key in config.get(pattern) or {}:
                re.compile(key)
    except lorakit.LoraError:
        raise
    except re.error as e:
        raise PoolError(f"{CONFIG_FILE} holds an invalid regular expression in rank_pattern or alpha_pattern "
                        f"({e}); fix the pattern") from e
    except Exception as e:
        raise PoolError(f"the adapter's files could not be read: {_why(e)}") from e
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise PoolError(f"the adapter's weights hold NaN or infinite values ({', '.join(bad[:3])}"
                        f"{', ...' if len(bad) > 3 else ''}); retrain or re-export the adapter")
    if config.get("bias", "none") != "none":
        raise PoolError(f"the adapter trains biases (bias={config['bias']!r}), which would change the base model "
                        f"for every request; merge it into the model (lorakit merge) and serve the result")


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def _size_of(directory: Path) -> int:
    """Bytes the adapter's weights take in memory (its safetensors file, whose header is negligible)."""
    return (directory / WEIGHTS_FILE).stat().st_size
