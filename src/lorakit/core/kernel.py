"""lorakit's C kernels (kernels.c): the fused merge, W += sign·s·left·right for many fp32 CPU weights in one call,
and for the lean serving forward, on bf16 rows computed each on its own: each row's own LoRA (lora_rows),
RMSNorm (rms_norm), RoPE with the KV-cache writes (rope_cache) and decode attention (decode_attention); and the
greedy choice over a batch's logits (argmax).

Why not addmm_: per weight, MKL computes the rank-r product as a GEMM (K = 8 runs it at ~70 GFLOP/s) and then
adds it into W, so merging SmolLM2's 60 q,v weights took 5.6-6.9 ms where one read and write of those 53 MB takes
3.4-4.1; one pass that adds each row's update as it goes took 4.3-5.2 (bench/merge_floor.py, BENCHMARKS.md). No
PyTorch op fuses the two. Why not embedding_bag for the serving LoRA (what lorakit used before): each row's update
needs x·Aᵀ, then t·(s·Bᵀ), then a bf16 add, four ops a product whose rows must each be summed on their own (so
that a row's bits never depend on the batch); one kernel call took 12 µs against 61 for 8 rows, 30 against 122
for 32, on SmolLM2's fused q,k,v with 8 adapters.

Why C through ctypes and not a torch C++ extension: it compiles in half a second instead of ~30 s (no torch
headers, no ninja), once per machine, into lorakit's cache. It runs on torch's own OpenMP threads: torch has
already loaded its libgomp.so.1, so the kernel's reference to that name binds to the same runtime (checked after
loading: a kernel that would bring a second OpenMP runtime is not used, as its threads would fight torch's).
Without a C compiler, on another OS, or with LORAKIT_KERNELS=0, merges use addmm_ (same formula, ~1.3x slower)
and `lorakit serve` uses the transformers forward instead of the lean one.
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
from pathlib import Path

import torch

from lorakit.core.paths import cache_root

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC")
LIBS = ("-lm",)
MAX_RANK = 1024  # most summed ranks of one fused product lora_rows takes (kernels.c MAX_RANK)
MAX_WIDTH = 32768  # widest input lora_rows and rms_norm take (kernels.c MAX_IN)
MAX_HEAD = 1024  # largest (even) head size rope_cache and decode_attention take (kernels.c MAX_HEAD)


class _Target(ctypes.Structure):
    """lk_target in kernels.c."""

    _fields_ = [(n, ctypes.c_int64) for n in ("r0", "rank", "lo", "hi")]


class _Part(ctypes.Structure):
    """lk_part in kernels.c."""

    _fields_ = [("w", ctypes.c_void_p), ("left", ctypes.c_void_p), ("right", ctypes.c_void_p),
                *[(n, ctypes.c_int64) for n in ("rows", "cols", "rank", "ldw", "ls0", "ls1", "ldr")],
                ("scale", ctypes.c_float)]


_lock = threading.Lock()
_loaded: tuple[ctypes.CDLL | None, str] | None = None  # (library or None, why not)


def status() -> str:
    """How merges run here: 'fused kernel' or 'addmm_ (<why the kernels are not used>)'."""
    why = unavailable()
    return "fused kernel" if why is None else f"addmm_ ({why})"


def unavailable() -> str | None:
    """Why the kernels are not used here (None when they are)."""
    lib, why = _library()
    return None if lib is not None else why


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


def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on first use (None where they are not available: see status)."""
    return _library()[0]


def lora_targets(spans: list[tuple[int, int, int, int]]) -> ctypes.Array:
    """lora_rows' description of a fused product's adapted targets: (first rank, ranks, first column, end
    column) each, in the order of their ranks."""
    return (_Target * len(spans))(*[_Target(*span) for span in spans])


def lora_rows(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None, slot: torch.Tensor, a: torch.Tensor,
              b: torch.Tensor, targets: ctypes.Array) -> None:
    """y[rows[i]] += the LoRA update of x[rows[i]] with adapter slot[i], in place, for bf16 x (n, in) and y
    (n, width) with unit column stride; int64 rows (None: every row) and slot; bf16 a (adapters·in, R): each
    adapter's Aᵀ, b (adapters·R, width): each adapter's s·Bᵀ over the whole output. Each row's sums run in one
    fixed order, so its result does not depend on the other rows (kernels.c, lk_lora_rows). The caller checks
    library() first: the lean forward does not start without it."""
    lib, n = _library()[0], slot.shape[0]
    # The kernel reads raw memory: what it assumes is checked here (~1 µs), not trusted.
    if not (x.dtype == y.dtype == a.dtype == b.dtype == torch.bfloat16
            and x.stride(1) == 1 and y.stride(1) == 1 and a.is_contiguous() and b.is_contiguous()
            and slot.dtype == torch.int64 and slot.is_contiguous() and x.shape[0] == y.shape[0]
            and a.shape[0] % x.shape[1] == 0 and b.shape == (a.shape[0] // x.shape[1] * a.shape[1], y.shape[1])
            and (rows is None or (rows.dtype == torch.int64 and rows.is_contiguous() and rows.shape == slot.shape))
            and (rows is not None or n == x.shape[0])):
        raise ValueError("lora_rows: bf16 x and y with unit column stride, contiguous bf16 tables of matching "
                         "shapes and contiguous int64 rows and slots are required")
    status = lib.lk_lora_rows(x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0), x.shape[0],
                              a.shape[0] // x.shape[1], n, None if rows is None else rows.data_ptr(),
                              slot.data_ptr(), a.data_ptr(), x.shape[1], a.shape[1], b.data_ptr(), b.shape[1],
                              ctypes.addressof(targets), len(targets), torch.get_num_threads())
    if status == -1:
        raise ValueError(f"lora_rows takes ranks up to {MAX_RANK} and inputs up to {MAX_WIDTH} wide, not "
                         f"{a.shape[1]} and {x.shape[1]}")
    if status:
        raise ValueError("lora_rows: a row, adapter slot or target span outside the tensors; nothing was written")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """LlamaRMSNorm of bf16 rows x (n, d): weight · bf16(x / sqrt(mean(x²) + eps)), in fp32, each row summed in a
    fixed order (kernels.c, lk_rms_norm); into `out` (n, d) when given. The caller checks library() first."""
    out = torch.empty(x.shape, dtype=torch.bfloat16) if out is None else out
    if not (x.dtype == weight.dtype == out.dtype == torch.bfloat16 and x.dim() == 2 and x.stride(1) == 1
            and out.shape == x.shape and out.stride(1) == 1 and weight.shape == (x.shape[1],)
            and weight.is_contiguous() and x.device.type == out.device.type == weight.device.type == "cpu"):
        raise ValueError("rms_norm: bf16 CPU rows x and out of one shape with unit column stride and a contiguous "
                         "bf16 weight of their width are required")
    if _library()[0].lk_rms_norm(x.data_ptr(), x.stride(0), weight.data_ptr(), out.data_ptr(), out.stride(0),
                                 x.shape[0], x.shape[1], eps, torch.get_num_threads()):
        raise ValueError(f"rms_norm takes rows up to {MAX_WIDTH} wide, not {x.shape[1]}")
    return out


def rope_cache(qkv: torch.Tensor, heads: int, kv_heads: int, cos: torch.Tensor, signed_sin: torch.Tensor,
               positions: torch.Tensor, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
    """RoPE on the q and k heads of bf16 fused q,k,v rows (n, (heads + 2·kv_heads)·D), in place, as transformers
    applies it in bf16, and each row's rotated keys and values written into the caches (slots, kv_heads,
    capacity, D) at (slots[i], every kv head, positions[i]) (kernels.c, lk_rope_cache). cos, signed_sin:
    (positions, D) tables, signed_sin's first half negated. The caller checks library() first."""
    n, width = qkv.shape
    d = cos.shape[1]
    if not (qkv.dtype == cos.dtype == signed_sin.dtype == keys.dtype == values.dtype == torch.bfloat16
            and qkv.stride(1) == 1 and width == (heads + 2 * kv_heads) * d and cos.is_contiguous()
            and signed_sin.is_contiguous() and signed_sin.shape == cos.shape and keys.is_contiguous()
            and values.is_contiguous() and keys.shape == values.shape and keys.shape[1] == kv_heads
            and keys.shape[3] == d and positions.dtype == slots.dtype == torch.int64 and positions.is_contiguous()
            and slots.is_contiguous() and positions.shape == slots.shape == (n,) and qkv.is_cpu and keys.is_cpu
            and values.is_cpu):
        raise ValueError("rope_cache: bf16 CPU rows of the fused q,k,v product, contiguous tables and caches of "
                         "matching shapes and contiguous int64 positions and slots are required")
    status = _library()[0].lk_rope_cache(
        qkv.data_ptr(), qkv.stride(0), n, heads, kv_heads, d, cos.data_ptr(), signed_sin.data_ptr(), cos.shape[0],
        positions.data_ptr(), slots.data_ptr(), keys.data_ptr(), values.data_ptr(), keys.shape[0], keys.shape[2],
        torch.get_num_threads())
    if status == -1:
        raise ValueError(f"rope_cache takes an even head size up to {MAX_HEAD}, not {d}")
    if status:
        raise ValueError(f"rope_cache: a position outside the tables ({cos.shape[0]}) or the cache ({keys.shape[2]}),"
                         f" or a slot outside the cache ({keys.shape[0]}); nothing was written")


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor,
                     lengths: torch.Tensor, kv_heads: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's attention over its own cache slot: q (n, heads·D) bf16 rows (unit column stride), caches
    (slots, kv_heads, capacity, D), int64 slots and key counts per row; softmax(q·kᵀ/√D)·v over the row's first
    lengths[i] keys, grouped-query, fp32, each row on its own (kernels.c, lk_decode_attention); (n, heads·D)
    bf16, into `out` when given. The caller checks library() first."""
    n, width = q.shape
    d = keys.shape[3]
    out = torch.empty(n, width, dtype=torch.bfloat16) if out is None else out
    if not (q.dtype == keys.dtype == values.dtype == out.dtype == torch.bfloat16 and q.stride(1) == 1
            and out.stride(1) == 1 and out.shape == q.shape and keys.is_contiguous() and values.is_contiguous()
            and keys.shape == values.shape and keys.shape[1] == kv_heads and width % d == 0
            and slots.dtype == lengths.dtype == torch.int64 and slots.is_contiguous() and lengths.is_contiguous()
            and slots.shape == lengths.shape == (n,) and q.is_cpu and keys.is_cpu and values.is_cpu):
        raise ValueError("decode_attention: bf16 CPU rows, contiguous caches of matching shapes and contiguous "
                         "int64 slots and lengths are required")
    status = _library()[0].lk_decode_attention(
        q.data_ptr(), q.stride(0), keys.data_ptr(), values.data_ptr(), keys.shape[0], keys.shape[2],
        slots.data_ptr(), lengths.data_ptr(), n, width // d, kv_heads, d, d**-0.5, out.data_ptr(), out.stride(0),
        torch.get_num_threads())
    if status == -1:
        raise ValueError(f"decode_attention: {width // d} query heads over {kv_heads} kv heads of size {d}")
    if status == -3:
        raise MemoryError("decode_attention: no memory for a long row's attention scores")
    if status:
        raise ValueError(f"decode_attention: a slot outside the cache ({keys.shape[0]}) or a length outside 1.."
                         f"{keys.shape[2]}")
    return out


def argmax(x: torch.Tensor) -> torch.Tensor | None:
    """Each row's index of its first maximum (its first NaN where it holds one), as x.max(-1).indices gives it,
    for (n, v) bf16 or fp32 CPU rows with unit column stride (kernels.c, lk_argmax; in a 32-row SmolLM2 decode
    step 0.50 ms over the head's bf16 logits, against 1.41 ms for torch.max over them widened to fp32); None
    where the kernels are not available or x is another kind of tensor."""
    lib = _library()[0]
    if (lib is None or x.dim() != 2 or x.dtype not in (torch.bfloat16, torch.float32) or not x.is_cpu
            or x.stride(1) != 1 or not x.shape[1]):
        return None
    out = torch.empty(x.shape[0], dtype=torch.int64)
    lib.lk_argmax(x.data_ptr(), x.stride(0), x.shape[0], x.shape[1], x.dtype == torch.bfloat16, out.data_ptr(),
                  torch.get_num_threads())
    return out


def fused(targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]) -> Fused | None:
    """A prepared call for these (eligible) targets, or None where the kernel is not available."""
    lib, _ = _library()
    return None if lib is None or not targets else Fused(lib, targets)


def _library() -> tuple[ctypes.CDLL | None, str]:
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _load()
    return _loaded


def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("LORAKIT_KERNELS", "1") == "0":
        return None, "LORAKIT_KERNELS=0"
    if not sys.platform.startswith("linux"):
        return None, f"the kernel is built for Linux only, this is {sys.platform}"
    try:
        path = build()
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        return None, f"could not build {SOURCE.name}: {e}"
    before = _openmp_libraries()
    lib = ctypes.CDLL(str(path))
    if _openmp_libraries() - before:
        return None, "it would run on a second OpenMP runtime beside torch's"
    lib.lk_merge.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    lib.lk_merge.restype = None
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.lk_lora_rows.argtypes = [p, i, p, i, i, i, i, p, p, p, i, i, p, i, p, i, ctypes.c_int]
    lib.lk_lora_rows.restype = ctypes.c_int
    lib.lk_rms_norm.argtypes = [p, i, p, p, i, i, i, ctypes.c_float, ctypes.c_int]
    lib.lk_rms_norm.restype = ctypes.c_int
    lib.lk_rope_cache.argtypes = [p, i, i, i, i, i, p, p, i, p, p, p, p, i, i, ctypes.c_int]
    lib.lk_rope_cache.restype = ctypes.c_int
    lib.lk_decode_attention.argtypes = [p, i, p, p, i, i, p, p, i, i, i, i, ctypes.c_float, p, i, ctypes.c_int]
    lib.lk_decode_attention.restype = ctypes.c_int
    lib.lk_argmax.argtypes = [p, i, i, i, ctypes.c_int, p, ctypes.c_int]
    lib.lk_argmax.restype = None
    return lib, ""


def build() -> Path:
    """Compile kernels.c for this machine into lorakit's cache, once (the file name holds a hash of the
    source, flags, compiler and CPU features), written atomically; returns its path."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, *LIBS, version, _cpu_flags()]).encode()).hexdigest()
    path = cache_root() / "kernels" / f"kernels-{key[:16]}.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(tmp), *LIBS], capture_output=True, text=True,
                              timeout=120)
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
