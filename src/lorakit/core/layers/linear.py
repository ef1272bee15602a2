"""LoRA wrappers around Linear / GPT-2 Conv1D (optionally some slices of a fused projection).

h = W0·x + (s)·B·A·x with A (r x in), B (out x r), s = alpha/r (Hu et al., 2021, eq. 3). The wrapper keeps the
original module as `base_layer` (so unwrap can hand back the very same object) and any number of named adapters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.errors import AdapterError, ConfigError
from lorakit.core.layers.common import (
    PER_ROW_MIN_TOKENS,
    PRESENT_MAX_ADAPTERS,
    WHOLE_WEIGHT,
    DeltaBlock,
    active_name,
    apply_delta,
    init_slots,
    mixed_by_groups,
    put_adapter,
    remove_adapter,
    row_ids_for,
)
from lorakit.core.state import AdapterState, register_wrapper


@register_wrapper
class LoraLinear(nn.Module):
    """LoRA around nn.Linear (weight out x in) or transformers' Conv1D (weight in x out, "fan_in_fan_out")."""

    def __init__(self, base_layer: nn.Module, state: AdapterState, slices: tuple[bool, ...] | None = None):
        super().__init__()
        self.base_layer = base_layer
        self.transposed = type(base_layer).__name__ == "Conv1D"
        w = base_layer.weight
        self.in_features, self.out_features = (w.shape[0], w.shape[1]) if self.transposed else (w.shape[1], w.shape[0])
        if slices is not None and self.out_features % len(slices):
            raise ConfigError(
                f"slices {slices} split {self.out_features} outputs into {len(slices)} parts unevenly; "
                f"give one flag per equal part (GPT-2 c_attn: (True, False, True) for q, k, v)"
            )
        self.slices = slices
        init_slots(self, state)
        self.pissa: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.original_weight: torch.Tensor | None = None
        self._stack: tuple | None = None  # (key, A stack, s·Bᵀ stack, owner): see _stacked
        self._rows_cache: tuple | None = None  # (key, plan) for the current rows: see _plan

    # Model code sometimes reads `self.q_proj.weight` (e.g. for its dtype); keep that working through the wrapper.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def part_size(self) -> int:
        return self.out_features // len(self.slices) if self.slices else self.out_features

    @property
    def enabled(self) -> list[int]:
        return [i for i, on in enumerate(self.slices) if on] if self.slices else [0]

    def add_adapter(self, name: str, rank: int, scaling: float, dropout: float, init: str) -> None:
        """Create A (k·r x in) and B (k·part x r), k = enabled slices (1 when unfused); B = 0 so ΔW starts at 0."""
        k = len(self.enabled)
        w = self.base_layer.weight
        a = torch.empty(k * rank, self.in_features, dtype=w.dtype, device=w.device)
        if init == "gaussian":
            nn.init.normal_(a, std=1 / rank)
        else:
            # loralib/PEFT: Kaiming-uniform with a=√5, the same as nn.Linear's default initialization.
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        b = torch.zeros(k * self.part_size, rank, dtype=w.dtype, device=w.device)
        put_adapter(self, name, a, b, scaling, dropout)
        if init == "pissa":
            self._init_pissa(name, rank)

    def _init_pissa(self, name: str, rank: int) -> None:
        """PiSSA (Meng et al., 2024): s·B·A = top-r SVD part of W, and the base keeps the residual W - s·B·A."""
        if self.slices:
            raise ConfigError("init='pissa' is not supported on fused slices; adapt the whole module instead")
        w2 = self.weight_2d()
        w = (w2.t() if self.transposed else w2).detach().float()  # (out, in) for both layouts
        u, sv, vh = torch.linalg.svd(w, full_matrices=False)
        s = self.scaling[name]
        root = sv[:rank].sqrt() / math.sqrt(s)
        with torch.no_grad():
            self.lora_A[name].copy_(root[:, None] * vh[:rank])
            self.lora_B[name].copy_(u[:, :rank] * root)
            if self.original_weight is None:
                self.original_weight = self.weight.detach().clone()
            apply_delta(w2, self.delta_parts(name), -s)
        self.pissa[name] = (self.lora_A[name].detach().clone(), self.lora_B[name].detach().clone())

    def remove_adapter(self, name: str) -> None:
        remove_adapter(self, name)

    def weight_2d(self) -> torch.Tensor:
        """The base weight as stored (out x in, or in x out for Conv1D); a view, so writes reach the module."""
        return self.base_layer.weight.data

    def delta_parts(self, name: str) -> list[DeltaBlock]:
        """Where s·left@right goes in weight_2d() for each adapted slice."""
        a, b = self.lora_A[name], self.lora_B[name]
        if not self.slices:  # the common case, without the per-slice bookkeeping below
            return [(WHOLE_WEIGHT, a.t(), b.t())] if self.transposed else [(WHOLE_WEIGHT, b, a)]
        p = self.part_size
        r = a.shape[0] // len(self.enabled)
        parts: list[DeltaBlock] = []
        for j, e in enumerate(self.enabled):
            aj, bj = a[j * r : (j + 1) * r], b[j * p : (j + 1) * p]
            rows = slice(e * p, (e + 1) * p) if self.slices else slice(None)
            if self.transposed:
                parts.append(((slice(None), rows), aj.t(), bj.t()))
            else:
                parts.append(((rows, slice(None)), bj, aj))
        return parts

    def active_name(self) -> str | None:
        return active_name(self)

    def lora_out(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """s·B·A·dropout(x) for one adapter, shaped like the base output."""
        a, b, s = self.lora_A[name], self.lora_B[name], self.scaling[name]
        if self.dropout[name] and self.training:
            x = F.dropout(x, self.dropout[name], training=True)
        t = F.linear(x.to(a.dtype), a)  # (..., k·r)
        if not self.slices:
            return F.linear(t, b) * s
        k, n, p = len(self.enabled), len(self.slices), self.part_size
        lead = t.shape[:-1]
        t = t.reshape(-1, k, a.shape[0] // k).transpose(0, 1)  # (k, N, r)
        u = torch.bmm(t, b.view(k, p, -1).transpose(1, 2))  # (k, N, p)
        out = torch.zeros(u.shape[1], n, p, dtype=u.dtype, device=u.device)
        out.index_copy_(1, torch.tensor(self.enabled, device=u.device), u.transpose(0, 1))
        return (out * s).reshape(*lead, n * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        st = self.state
        if st.rows is not None and not st.disabled and self.lora_A:
            return self._mixed(x, y)
        # active_name(self), inlined, with the factors read straight from the ParameterDicts' own dicts: module
        # attribute access and ParameterDict indexing cost ~15 µs a call, paid by every adapted module in every
        # forward (60 modules: ~1 ms, 0.4% of a batch-1 x 128-token SmolLM2 forward).
        name = st.active
        a = None if name is None or st.disabled else self._modules["lora_A"]._parameters.get(name)
        if a is None or name in self.merged:
            return y
        if self.slices or (self.dropout[name] and self.training):
            return y + self.lora_out(x, name).to(y.dtype)
        # Fast path: y += s·(x Aᵀ) Bᵀ as one in-place addmm on the base output. The base matmul's backward does
        # not need its output, so writing into it is autograd-safe, and it saves allocating and copying a second
        # (tokens x out) tensor, which measured ~3x more overhead than the LoRA arithmetic itself.
        b = self._modules["lora_B"]._parameters[name]
        # dtype checks before .to(): a no-op .to() still costs microseconds, paid 60x per forward.
        t = F.linear(x if x.dtype == a.dtype else x.to(a.dtype), a)
        if t.dtype != y.dtype:
            t = t.to(y.dtype)
        if b.dtype != y.dtype:  # e.g. bf16 autocast: in-place ops are not autocast, so match y ourselves
            b = b.to(y.dtype)
        y.view(-1, self.out_features).addmm_(t.view(-1, t.shape[-1]), b.t(), alpha=self.scaling[name])
        return y

    def _mixed(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = row_ids_for(self.state, x.shape[0])
        if self.merged:
            raise AdapterError(f"adapters {self.merged} are merged; unmerge before running a mixed-adapter batch")
        if self.slices:
            return mixed_by_groups(self, x, y, rows)
        b = x.shape[0]
        tokens = x.numel() // (b * self.in_features)
        plan = self._plan(rows, tokens)
        if plan[0] == "none":
            return y
        if plan[0] == "per_row":
            # Each row's own factors, gathered once per choice of rows, and two batched matmuls: FLOPs are each
            # row's own rank (zero-padded to the largest present).
            _, at, bt = plan
            t = torch.bmm(x.reshape(b, tokens, -1).to(at.dtype), at)  # (b, T, r_max)
            y.view(b, tokens, -1).baddbmm_(t.to(y.dtype), bt.to(y.dtype))
            return y
        # All adapters present in the batch at once, without per-row weight copies or rank padding:
        # t = x·[A_1; A_2; ...]ᵀ (columns = every present adapter's rank), zero the columns that are not the
        # row's own adapter, then y += t·[s_1·B_1, s_2·B_2, ...]ᵀ. Two GEMMs of inner size Σ r_i.
        _, a, bt, mask = plan
        t = F.linear(x.to(a.dtype), a).view(b, -1, a.shape[0]) * mask[:, None, :]  # (b, T, Σr)
        y.view(-1, self.out_features).addmm_(t.view(-1, a.shape[0]).to(y.dtype), bt.to(y.dtype))
        return y

    def _plan(self, rows: torch.Tensor, tokens: int) -> tuple:
        """How this layer computes the current rows, with its tables; cached until the rows or adapters change.

        Short rows (decode steps) over few adapters multiply by all present adapters at once (no copies; the
        extra FLOPs grow with their number). Long rows, or many adapters of about equal rank, take per-row
        factors: a one-off gather of (batch x r x (in + out)) values, then only each row's own rank.
        """
        a_all, bt_all, owner = self._stacked()
        key = (self._stack[0], self.state.rows_version, rows.shape[0], tokens >= PER_ROW_MIN_TOKENS)
        if self._rows_cache is None or self._rows_cache[0] != key:
            present = torch.isin(owner, rows)  # stacked rows (rank components) of adapters in the batch
            ranks = torch.bincount(owner[present])
            ranks = ranks[ranks > 0]  # this layer's rank of each adapter present in the batch
            total = int(ranks.sum())
            # Per-row factors pay the largest present rank on every row, so for short rows they only win when
            # many adapters of about the same rank share the batch.
            many_alike = len(ranks) > PRESENT_MAX_ADAPTERS and int(ranks.max()) * len(ranks) <= 1.25 * total
            if total == 0:
                plan: tuple = ("none",)
            elif tokens >= PER_ROW_MIN_TOKENS or many_alike:
                plan = ("per_row", *self._per_row(rows, a_all, bt_all, owner))
            else:
                cols = present.nonzero().squeeze(1)
                mask = (rows[:, None] == owner[cols][None, :]).to(a_all.dtype)  # (batch, Σr)
                plan = ("present", a_all.index_select(0, cols), bt_all.index_select(0, cols), mask)
            self._rows_cache = (key, plan)
        return self._rows_cache[1]

    def _per_row(self, rows: torch.Tensor, a_all: torch.Tensor, bt_all: torch.Tensor,
                 owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((batch, in, r_max) Aᵀ, (batch, r_max, out) s·Bᵀ) per row; base rows and padding read a zero row."""
        ranks = torch.bincount(owner, minlength=len(self.state.names) + 1)  # adapter index -> rank here
        starts = ranks.cumsum(0) - ranks
        r_max = int(ranks[rows].max())
        offset = torch.arange(r_max, device=rows.device)
        idx = torch.where(offset[None, :] < ranks[rows][:, None], starts[rows][:, None] + offset[None, :],
                          a_all.shape[0])  # (batch, r_max); a_all.shape[0] is the appended zero row
        a_pad = torch.cat([a_all, a_all.new_zeros(1, a_all.shape[1])])
        bt_pad = torch.cat([bt_all, bt_all.new_zeros(1, bt_all.shape[1])])
        return a_pad[idx].transpose(1, 2).contiguous(), bt_pad[idx]

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every adapter's A stacked by rows (Σr x in), s·Bᵀ likewise (Σr x out), and each row's adapter index."""
        st = self.state
        a0 = next(iter(self.lora_A.values()))
        key = (st.version, a0.device, a0.dtype)
        if self._stack is None or self._stack[0] != key:
            names = [(i, n) for i, n in enumerate(st.names, start=1) if n in self.lora_A]
            with torch.no_grad():
                a_all = torch.cat([self.lora_A[n] for _, n in names]) if names else a0[:0]
                bt_all = torch.cat([self.lora_B[n].t() * self.scaling[n] for _, n in names]) if names else a0[:0]
            owner = torch.cat([torch.full((self.lora_A[n].shape[0],), i, dtype=torch.long) for i, n in names])
            self._stack = (key, a_all, bt_all.contiguous(), owner.to(a0.device))
        return self._stack[1], self._stack[2], self._stack[3]

    def extra_repr(self) -> str:
        ranks = {n: a.shape[0] for n, a in self.lora_A.items()}
        return f"ranks={ranks}, slices={self.slices}, merged={self.merged}"
