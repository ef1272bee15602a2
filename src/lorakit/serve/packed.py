"""Base-weight products for the lean forward (llama.py): bf16 weights prepacked for oneDNN, in row counts that give
every row the same bits however many rows come with it.

oneDNN picks its kernel by the number of rows, and a row's bf16 result changes with the kernel (where:
BENCHMARKS.md). So a decode step's products take at most ROWS rows at a time, each n-row input padded with zero
rows to the smallest count (n itself where it can) proven to give every row what a ROWS-row product gives it
(exact_counts, probed once per shape); prefills take larger products of proven sizes. Where oneDNN cannot prepack
bf16 weights (CPUs without AVX-512), products run through F.linear, probed the same way.
"""

from __future__ import annotations

import bisect
import functools

import torch
import torch.nn.functional as F

ROWS = 32  # most rows per base-weight product of a decode step (and of the head); fewer where exact_counts allows
# Rows in every base-weight product of a prefill. A prompt's rows meet the same kernel alone or packed, and never
# need to match a decode step's, so prefills can take larger products, which cost less per row; 64 keeps a lone
# request's first token nearly as fast as 32 (BENCHMARKS.md).
PREFILL_ROWS = 64
# Most rows in one prefill product, where the counts PREFILL_ROWS, PREFILL_ROWS + 16, ..., PREFILL_MAX (and 40,
# 48, 56 below it) give a PREFILL_ROWS-row product's rows (exact_counts keeps those that do). Steps of 16 (8 below
# 64) bound the kernels oneDNN creates and keeps, one per row count and shape, to 12. The counts below 64 serve a
# step whose running rows take their decode step in a prefill (LeanLlama.decode_in_prefill). A larger limit saved
# under 1% of a 32-request round for more memory (BENCHMARKS.md).
PREFILL_MAX = 192


class Packed:
    """y = x·Wᵀ in bf16 with W prepacked for oneDNN (plain F.linear without it), in products of allowed sizes."""

    def __init__(self, weight: torch.Tensor):
        w = weight.detach().to(torch.bfloat16).contiguous()
        self.onednn = _onednn_bf16()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(w, ROWS) if self.onednn else w
        self.out_features, self.in_features = w.shape
        self.sizes: dict[int, tuple[int, ...]] = {}
        """Product size (ROWS, PREFILL_ROWS) -> the row counts a product may take instead, ascending, the size
        itself included: LeanLlama sets those of 1, ..., ROWS and of PREFILL_ROWS, PREFILL_ROWS + 16, ...,
        PREFILL_MAX that exact_counts proved equivalent (both the union of the two where the sizes themselves are
        equivalent: LeanLlama.decode_in_prefill). Absent: exactly that size."""
        self.pads: dict[int, list] = {}  # row count -> [zero-padded input buffer (count, in), rows in use]

    def _size(self, n: int, rows: int) -> int:
        """The row count of the product that takes n rows: n itself when allowed, else the next allowed count
        above it, 0 when n is more than one product takes. Called for every product: kept to a dict lookup
        and a bisect."""
        sizes = self.sizes.get(rows)
        if sizes is None:
            return rows if n <= rows else 0
        if n <= len(sizes) and sizes[n - 1] == n:  # a decode step's rows as they are: no search
            return n
        i = bisect.bisect_left(sizes, n)
        return sizes[i] if i < len(sizes) else 0

    def padded_input(self, n: int, rows: int = ROWS) -> torch.Tensor | None:
        """Where to write an n-row input so that __call__ multiplies it without copying: the first n rows of a
        persistent buffer whose other rows are zero (None when n rows need no padding or one product cannot take
        them). Saves the allocation, zero fill and concatenation of padding on each product that pads."""
        size = self._size(n, rows)
        if size == n or not size:
            return None
        pad = self.pads.get(size)
        if pad is None:
            pad = self.pads[size] = [torch.zeros(size, self.in_features, dtype=torch.bfloat16), 0]
        buf, used = pad
        if used > n:
            buf[n:used].zero_()  # rows a larger batch left behind: padding must stay exact zeros
        pad[1] = n
        return buf[:n]

    def __call__(self, x: torch.Tensor, rows: int = ROWS) -> torch.Tensor:
        """x: (n, in) multiplied in products of allowed row counts (`sizes`; the missing rows zeros), the largest
        allowed at a time: every row meets the same kernel however many rows come with it."""
        n = x.shape[0]
        size = self._size(n, rows)
        if size == n:
            return self.product(x.contiguous())
        if not size:
            most = self.sizes.get(rows, (rows,))[-1]
            return torch.cat([self(x[i : i + most], rows) for i in range(0, n, most)])
        buf = self.pads.get(size)
        if buf is None or buf[1] != n or x.data_ptr() != buf[0].data_ptr():
            self.padded_input(n, rows).copy_(x)
        return self.product(self.pads[size][0])[:n]

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """One product of any number of rows."""
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        return F.linear(x, self.weight)


@functools.cache
def _onednn_bf16() -> bool:
    """Whether oneDNN multiplies bf16 weights on this CPU (it needs AVX512-BW/VL/DQ or AVX-NE-CONVERT)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), ROWS)
    except RuntimeError:
        return False
    return True


@functools.cache
def exact_counts(out_features: int, in_features: int, threads: int, rows: int, counts: tuple[int, ...]
                 ) -> tuple[int, ...]:
    """Those of `counts` for which, for a prepacked (out, in) bf16 weight on this machine, a product of m rows gives
    each row bit for bit what a `rows`-row product gives it (none when the `rows`-row product's own rows differ).
    A product may then take m rows instead of `rows`: for m < ROWS = rows, a decode step's products need no
    padding; for m from ROWS + 8 to PREFILL_MAX, a prefill takes fewer, larger (or, from 40 to 56 rows, smaller)
    products.

    oneDNN picks its kernel by shape, row count and threads, never by the values, so one probe per shape decides.
    Random data would be a weak probe: a kernel that sums in another order changes very few bf16 outputs of it. So
    the probe weight is built so that every output cancels: each row's last column offsets the sum of the others,
    leaving |y| far below its terms, where fp32 rounding in another order changes many bf16 outputs. Every row of
    the probe is the same vector, so a row's result must not depend on its position either."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(in_features, generator=g) * 16).to(torch.bfloat16)
    w = (torch.randn(out_features, in_features, generator=g) * 16).to(torch.bfloat16)
    for i in range(0, out_features, 4096):  # in slices: no fp32 copy of a whole (head-sized) weight
        part = w[i : i + 4096]
        part[:, -1] = (-(part[:, :-1].float() @ x[:-1].float()) / x[-1].float()).to(torch.bfloat16)
    probe = Packed(w)
    xs = x[None].expand(max((*counts, rows)), -1).contiguous()
    full = probe.product(xs[:rows])
    first = full[:1]
    if not bool((full == first).all()):
        return ()
    return tuple(m for m in counts if bool((probe.product(xs[:m]) == first).all()))
