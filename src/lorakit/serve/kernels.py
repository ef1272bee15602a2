"""The lean serving forward's C kernels (kernels.c), on bf16 CPU rows: each row's own LoRA (lora_rows), RMSNorm
(rms_norm), RoPE with the KV-cache writes (rope_cache), decode attention (decode_attention); and the greedy choice
over either forward's logits (argmax).

Each computes every row on its own in a fixed order, so that a row's bits never depend on the rest of the batch.
Built and loaded as core.kernel builds the merge kernel; where they are not available (no C compiler, another OS,
LORAKIT_KERNELS=0) `lorakit serve` uses the transformers forward and greedy choices torch.max.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from lorakit.core.kernel import CLibrary

MAX_RANK = 1024  # most summed ranks of one fused product lora_rows takes (kernels.c MAX_RANK)
MAX_WIDTH = 32768  # widest input lora_rows and rms_norm take (kernels.c MAX_IN)
MAX_HEAD = 1024  # largest (even) head size rope_cache and decode_attention take (kernels.c MAX_HEAD)


class _Target(ctypes.Structure):
    """lk_target in kernels.c."""

    _fields_ = [(n, ctypes.c_int64) for n in ("r0", "rank", "lo", "hi")]


def _bind(lib: ctypes.CDLL) -> None:
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


LIBRARY = CLibrary(Path(__file__).with_name("kernels.c"), _bind)


def status() -> str:
    """Which forward serves bf16 Llama models on the CPU here: 'lean forward' or 'transformers forward (<why>)'."""
    why = LIBRARY.unavailable()
    return "lean forward" if why is None else f"transformers forward ({why})"


def unavailable() -> str | None:
    """Why the kernels are not used here (None when they are)."""
    return LIBRARY.unavailable()


def lora_targets(spans: list[tuple[int, int, int, int]]) -> ctypes.Array:
    """lora_rows' description of a fused product's adapted targets: (first rank, ranks, first column, end
    column) each, in the order of their ranks."""
    return (_Target * len(spans))(*[_Target(*span) for span in spans])


def lora_rows(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None, adapter_ids: torch.Tensor, a: torch.Tensor,
              b: torch.Tensor, targets: ctypes.Array) -> None:
    """y[rows[i]] += the LoRA update of x[rows[i]] with adapter adapter_ids[i], in place, for bf16 x (n, in) and y
    (n, width) with unit column stride; int64 rows (None: every row) and adapter_ids; bf16 a (adapters·in, R): each
    adapter's Aᵀ, b (adapters·R, width): each adapter's s·Bᵀ over the whole output. Each row's sums run in one
    fixed order, so its result does not depend on the other rows (kernels.c, lk_lora_rows). The caller checks
    unavailable() first: the lean forward does not start without it."""
    lib, ids, n = LIBRARY.get(), adapter_ids, adapter_ids.shape[0]
    # The kernel reads raw memory: what it assumes is checked here, not trusted.
    if not (x.dtype == y.dtype == a.dtype == b.dtype == torch.bfloat16
            and x.stride(1) == 1 and y.stride(1) == 1 and a.is_contiguous() and b.is_contiguous()
            and ids.dtype == torch.int64 and ids.is_contiguous() and x.shape[0] == y.shape[0]
            and a.shape[0] % x.shape[1] == 0 and b.shape == (a.shape[0] // x.shape[1] * a.shape[1], y.shape[1])
            and (rows is None or (rows.dtype == torch.int64 and rows.is_contiguous() and rows.shape == ids.shape))
            and (rows is not None or n == x.shape[0])):
        raise ValueError("lora_rows: bf16 x and y with unit column stride, contiguous bf16 tables of matching "
                         "shapes and contiguous int64 rows and adapter ids are required")
    status = lib.lk_lora_rows(x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0), x.shape[0],
                              a.shape[0] // x.shape[1], n, None if rows is None else rows.data_ptr(),
                              ids.data_ptr(), a.data_ptr(), x.shape[1], a.shape[1], b.data_ptr(), b.shape[1],
                              ctypes.addressof(targets), len(targets), torch.get_num_threads())
    if status == -1:
        raise ValueError(f"lora_rows takes ranks up to {MAX_RANK} and inputs up to {MAX_WIDTH} wide, not "
                         f"{a.shape[1]} and {x.shape[1]}")
    if status:
        raise ValueError("lora_rows: a row, adapter id or target span outside the tensors; nothing was written")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """LlamaRMSNorm of bf16 rows x (n, d): weight · bf16(x / sqrt(mean(x²) + eps)), in fp32, each row summed in a
    fixed order (kernels.c, lk_rms_norm); into `out` (n, d) when given. The caller checks unavailable() first."""
    out = torch.empty(x.shape, dtype=torch.bfloat16) if out is None else out
    if not (x.dtype == weight.dtype == out.dtype == torch.bfloat16 and x.dim() == 2 and x.stride(1) == 1
            and out.shape == x.shape and out.stride(1) == 1 and weight.shape == (x.shape[1],)
            and weight.is_contiguous() and x.device.type == out.device.type == weight.device.type == "cpu"):
        raise ValueError("rms_norm: bf16 CPU rows x and out of one shape with unit column stride and a contiguous "
                         "bf16 weight of their width are required")
    if LIBRARY.get().lk_rms_norm(x.data_ptr(), x.stride(0), weight.data_ptr(), out.data_ptr(), out.stride(0),
                                 x.shape[0], x.shape[1], eps, torch.get_num_threads()):
        raise ValueError(f"rms_norm takes rows up to {MAX_WIDTH} wide, not {x.shape[1]}")
    return out


def rope_cache(qkv: torch.Tensor, heads: int, kv_heads: int, cos: torch.Tensor, signed_sin: torch.Tensor,
               positions: torch.Tensor, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
    """RoPE on the q and k heads of bf16 fused q,k,v rows (n, (heads + 2·kv_heads)·D), in place, as transformers
    applies it in bf16, and each row's rotated keys and values written into the caches (slots, kv_heads,
    capacity, D) at (slots[i], every kv head, positions[i]) (kernels.c, lk_rope_cache). cos, signed_sin:
    (positions, D) tables, signed_sin's first half negated. The caller checks unavailable() first."""
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
    status = LIBRARY.get().lk_rope_cache(
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
    bf16, into `out` when given. The caller checks unavailable() first."""
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
    status = LIBRARY.get().lk_decode_attention(
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
    for (n, v) bf16 or fp32 CPU rows with unit column stride (kernels.c, lk_argmax: it reads a bf16 head's logits
    as they are, where torch.max needs them widened to fp32 first); None where the kernels are not available or
    x is another kind of tensor."""
    lib = LIBRARY.get()
    if (lib is None or x.dim() != 2 or x.dtype not in (torch.bfloat16, torch.float32) or not x.is_cpu
            or x.stride(1) != 1 or not x.shape[1]):
        return None
    out = torch.empty(x.shape[0], dtype=torch.int64)
    lib.lk_argmax(x.data_ptr(), x.stride(0), x.shape[0], x.shape[1], x.dtype == torch.bfloat16, out.data_ptr(),
                  torch.get_num_threads())
    return out


