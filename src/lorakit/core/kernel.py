"""lorakit's C kernels: how one is compiled and loaded (CLibrary), and the fused merge (merge.c),
W += sign·s·left·right for many fp32 CPU weights in one call.

Why not addmm_: per weight, MKL computes the rank-r product as a GEMM and then adds it into W, a second pass over
W; the kernel adds each row's update as it reads the row, one pass (BENCHMARKS.md). No PyTorch op fuses the two.
Why C through ctypes and not a torch C++ extension: it compiles in about half a second (no torch headers, no
ninja), once per machine, into lorakit's cache, and runs on torch's own OpenMP threads. Without a C compiler, on
another OS, or with LORAKIT_KERNELS=0, merges use addmm_ (same formula).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from lorakit.core.paths import cache_root

FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC")
LIBS = ("-lm",)


class CLibrary:
    """A C source compiled for this machine on first use and loaded through ctypes, or why it is not available.

    The library runs on torch's OpenMP runtime: torch has already loaded its libgomp.so.1, so the library's
    reference to that name binds to the same one (checked after loading: a library that would bring a second
    OpenMP runtime is not used, as its threads would fight torch's)."""

    def __init__(self, source: Path, bind: Callable[[ctypes.CDLL], None]):
        self.source = source
        self._bind = bind  # sets each function's argtypes and restype
        self._lock = threading.Lock()
        self._loaded: tuple[ctypes.CDLL | None, str] | None = None  # (library or None, why not)

    def get(self) -> ctypes.CDLL | None:
        """The loaded library, built on first use (None where it is not available: see unavailable)."""
        return self._state()[0]

    def unavailable(self) -> str | None:
        """Why the library is not used here (None when it is)."""
        lib, why = self._state()
        return None if lib is not None else why

    def _state(self) -> tuple[ctypes.CDLL | None, str]:
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self.load()
        return self._loaded

    def load(self) -> tuple[ctypes.CDLL | None, str]:
        """Build (if needed) and load the library: (it, "") or (None, why not). Not cached: see get."""
        if os.environ.get("LORAKIT_KERNELS", "1") == "0":
            return None, "LORAKIT_KERNELS=0"
        if not sys.platform.startswith("linux"):
            return None, f"lorakit's C kernels are built for Linux only, this is {sys.platform}"
        try:
            path = self.build()
        except (OSError, subprocess.SubprocessError, RuntimeError) as e:
            return None, f"could not build {self.source.name}: {e}"
        before = _openmp_libraries()
        lib = ctypes.CDLL(str(path))
        if _openmp_libraries() - before:
            return None, "it would run on a second OpenMP runtime beside torch's"
        self._bind(lib)
        return lib, ""

    def build(self) -> Path:
        """Compile the source for this machine into lorakit's cache, once (the file name holds a hash of the
        source, flags, compiler and CPU features), written atomically; returns its path."""
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            raise RuntimeError("no C compiler found (set CC, or install gcc)")
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256("\0".join([self.source.read_text(), *FLAGS, *LIBS, version, _cpu_flags()]).encode())
        path = cache_root() / "kernels" / f"{self.source.stem}-{key.hexdigest()[:16]}.so"
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            done = subprocess.run([compiler, *FLAGS, str(self.source), "-o", str(tmp), *LIBS], capture_output=True,
                                  text=True, timeout=120)
            if done.returncode:
                raise RuntimeError(done.stderr.strip()[-500:] or f"{compiler} exited with {done.returncode}")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def _cpu_flags() -> str:
    """The CPU's feature flags (-march=native builds for them), so a cache shared between machines is safe."""
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")),
                    "")
    except OSError:
        return ""


def _openmp_libraries() -> set[str]:
    """Files of OpenMP runtimes mapped into this process (Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps.splitlines() if "omp" in line.rsplit("/", 1)[-1]}


# ---- the merge kernel ----


class _Part(ctypes.Structure):
    """lk_part in merge.c."""

    _fields_ = [("w", ctypes.c_void_p), ("left", ctypes.c_void_p), ("right", ctypes.c_void_p),
                *[(n, ctypes.c_int64) for n in ("rows", "cols", "rank", "ldw", "ls0", "ls1", "ldr")],
                ("scale", ctypes.c_float)]


def _bind_merge(lib: ctypes.CDLL) -> None:
    lib.lk_merge.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    lib.lk_merge.restype = None


MERGE = CLibrary(Path(__file__).with_name("merge.c"), _bind_merge)


def status() -> str:
    """How merges run here: 'fused kernel' or 'addmm_ (<why the kernel is not used>)'."""
    why = MERGE.unavailable()
    return "fused kernel" if why is None else f"addmm_ ({why})"


def eligible(w: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> bool:
    """Whether the kernel can add left @ right into w in place: fp32 on the CPU, w and right with unit column
    stride, shapes (rows, cols) = (rows, r) @ (r, cols)."""
    return (w.dtype == left.dtype == right.dtype == torch.float32 and w.device.type == "cpu"
            and left.device.type == "cpu" and right.device.type == "cpu" and w.dim() == 2
            and w.stride(1) == 1 and right.stride(1) == 1 and left.shape[0] == w.shape[0]
            and right.shape == (left.shape[1], w.shape[1]))


class Fused:
    """A prepared kernel call over fixed targets: (w, left, right, s) with eligible(w, left, right).

    Holds raw pointers: the caller keeps the tensors alive and unmoved (merge's plan does, and is rebuilt when a
    storage changes)."""

    def __init__(self, lib: ctypes.CDLL, targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]):
        self._lib = lib
        self._parts = (_Part * len(targets))(*[
            _Part(w.data_ptr(), left.data_ptr(), right.data_ptr(), w.shape[0], w.shape[1], left.shape[1],
                  w.stride(0), left.stride(0), left.stride(1), right.stride(0), scale)
            for w, left, right, scale in targets])
        self._count = len(targets)

    def __call__(self, sign: float) -> None:
        """Every w += sign·s·left @ right, on torch's intra-op threads; releases the GIL while it runs."""
        self._lib.lk_merge(ctypes.addressof(self._parts), self._count, sign, torch.get_num_threads())


def fused(targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]) -> Fused | None:
    """A prepared call for these (eligible) targets, or None where the kernel is not available."""
    lib = MERGE.get()
    return None if lib is None or not targets else Fused(lib, targets)
