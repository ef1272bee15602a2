"""The lean forward's C kernels (serve/kernels.py): each one's formula, and each row's independence from the others."""

from __future__ import annotations

import pytest
import torch

from lorakit.serve import kernels

pytestmark = pytest.mark.skipif(kernels.unavailable() is not None, reason=f"no kernels: {kernels.unavailable()}")


def tables(adapters: int, inn: int, width: int, spans: list[tuple[int, int, int, int]], seed: int = 0):
    """Random bf16 (a, b) laid out as lora_rows takes them, b zero outside each rank's target span."""
    g = torch.Generator().manual_seed(seed)
    rank = sum(s[1] for s in spans)
    a = torch.randn(adapters * inn, rank, generator=g) * 0.1
    b = torch.zeros(adapters, rank, width)
    for r0, r, lo, hi in spans:
        b[:, r0 : r0 + r, lo:hi] = torch.randn(adapters, r, hi - lo, generator=g) * 0.1
    return a.to(torch.bfloat16), b.view(adapters * rank, width).to(torch.bfloat16)


def assert_one_bf16_step_apart(got: torch.Tensor, want: torch.Tensor) -> None:
    """bf16 results summed in another order: at most one bf16 step apart, and only in a few entries."""
    step = (want.float().abs() * 2**-7).clamp_min(2**-126)
    assert ((got.float() - want.float()).abs() <= step).all()
    assert (got != want).float().mean() < 0.05


def reference(x, y, rows, ids, a, b):
    """y[row] + x[row]·Aᵀ·(s·Bᵀ) in fp32, rounded once to bf16."""
    inn, rank, width = x.shape[1], a.shape[1], b.shape[1]
    out = y.clone()
    for i, row in enumerate(range(len(ids)) if rows is None else rows.tolist()):
        t = x[row].double() @ a.view(-1, inn, rank)[ids[i]].double()
        out[row] = (y[row].double() + t @ b.view(-1, rank, width)[ids[i]].double()).to(torch.bfloat16)
    return out


@pytest.mark.parametrize("spans", [
    [(0, 8, 0, 48), (8, 8, 64, 80)],  # q and v of a fused q,k,v: 16 ranks, one register block
    [(0, 4, 0, 48), (4, 8, 48, 96)],  # 12 ranks: a partial block
    [(0, 16, 0, 50), (16, 8, 50, 80)],  # 24 ranks: a full block and a partial one; spans not multiples of 16
])
def test_lora_rows_adds_each_rows_own_update_rounded_once(spans):
    adapters, inn, width, n = 3, 40, 96 if spans[-1][3] > 80 else 80, 7
    a, b = tables(adapters, inn, width, spans)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, inn, generator=g).to(torch.bfloat16)
    y = torch.randn(n, width, generator=g).to(torch.bfloat16)
    ids = torch.tensor([2, 0, 1, 1, 0, 2, 2])
    rows = torch.tensor([0, 2, 3, 6])
    for chosen, chosen_ids in ((None, ids), (rows, ids[rows])):
        got = y.clone()
        kernels.lora_rows(x, got, chosen, chosen_ids, a, b, kernels.lora_targets(spans))
        want = reference(x, y, chosen, chosen_ids, a, b)
        assert_one_bf16_step_apart(got, want)  # fp32 sums against a float64 reference
        untouched = [c for c in range(width) if not any(lo <= c < hi for _, _, lo, hi in spans)]
        assert torch.equal(got[:, untouched], y[:, untouched])
        if chosen is not None:  # rows not chosen are left alone
            others = [r for r in range(n) if r not in chosen.tolist()]
            assert torch.equal(got[others], y[others])


def test_a_row_gets_the_same_bits_alone_and_in_any_batch():
    spans = [(0, 8, 0, 64), (8, 8, 96, 128)]
    a, b = tables(4, 64, 128, spans, seed=3)
    targets = kernels.lora_targets(spans)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(33, 64, generator=g).to(torch.bfloat16)
    y = torch.randn(33, 128, generator=g).to(torch.bfloat16)
    ids = torch.randint(0, 4, (33,), generator=g)
    batch = y.clone()
    kernels.lora_rows(x, batch, None, ids, a, b, targets)
    for i in range(33):
        alone = y[i : i + 1].clone()
        kernels.lora_rows(x[i : i + 1].clone(), alone, None, ids[i : i + 1].clone(), a, b, targets)
        assert torch.equal(alone[0], batch[i])


def test_lora_rows_refuses_what_it_would_misread():
    spans = [(0, 4, 0, 16)]
    a, b = tables(2, 8, 16, spans)
    x, y = torch.zeros(2, 8, dtype=torch.bfloat16), torch.zeros(2, 16, dtype=torch.bfloat16)
    ids = torch.zeros(2, dtype=torch.long)
    targets = kernels.lora_targets(spans)
    with pytest.raises(ValueError, match="bf16 x and y"):
        kernels.lora_rows(x.float(), y, None, ids, a, b, targets)
    with pytest.raises(ValueError, match="bf16 x and y"):
        kernels.lora_rows(x, y, None, ids, a.t().contiguous().t(), b, targets)  # a not contiguous
    with pytest.raises(ValueError, match="bf16 x and y"):
        kernels.lora_rows(x, y, None, ids.int(), a, b, targets)
    with pytest.raises(ValueError, match="nothing was written"):  # adapter 2 of 2, row 5 of 2, a span past 16
        kernels.lora_rows(x, y, None, torch.tensor([0, 2]), a, b, targets)
    with pytest.raises(ValueError, match="nothing was written"):
        kernels.lora_rows(x, y, torch.tensor([0, 5]), ids, a, b, targets)
    with pytest.raises(ValueError, match="nothing was written"):
        kernels.lora_rows(x, y, None, ids, a, b, kernels.lora_targets([(0, 4, 8, 17)]))
    assert not y.any()


def test_rms_norm_is_llamas_rmsnorm_and_each_row_its_own():
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(37, 72, generator=g) * 3).to(torch.bfloat16)  # 72: four blocks of 16 and a tail of 8
    w = torch.randn(72, generator=g).to(torch.bfloat16)
    got = kernels.rms_norm(x, w, 1e-5)
    h = x.float()
    want = w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)  # LlamaRMSNorm
    assert_one_bf16_step_apart(got, want)
    for i in (0, 17, 36):
        assert torch.equal(kernels.rms_norm(x[i : i + 1].clone(), w, 1e-5)[0], got[i])
    out = torch.zeros(40, 72, dtype=torch.bfloat16)
    assert kernels.rms_norm(x, w, 1e-5, out[:37]).data_ptr() == out.data_ptr() and torch.equal(out[:37], got)
    with pytest.raises(ValueError, match="bf16 CPU rows"):
        kernels.rms_norm(x.float(), w, 1e-5)


def test_rope_cache_rotates_as_transformers_does_in_bf16_and_fills_each_rows_slot():
    g = torch.Generator().manual_seed(6)
    heads, kv, d, n = 4, 2, 8, 5
    qkv = torch.randn(n, (heads + 2 * kv) * d, generator=g).to(torch.bfloat16)
    angles = torch.arange(12.0)[:, None] * torch.rand(d // 2, generator=g)[None, :]
    cos = torch.cat([angles, angles], -1).cos().to(torch.bfloat16)
    sin = torch.cat([angles, angles], -1).sin().to(torch.bfloat16)
    signed = torch.cat([-sin[:, : d // 2], sin[:, d // 2 :]], -1)
    positions, slots = torch.tensor([0, 3, 11, 3, 7]), torch.tensor([1, 0, 2, 3, 1])
    keys, values = torch.zeros(4, kv, 16, d, dtype=torch.bfloat16), torch.zeros(4, kv, 16, d, dtype=torch.bfloat16)
    x = qkv[:, : (heads + kv) * d].view(n, heads + kv, d).clone()
    c, s = cos[positions][:, None], sin[positions][:, None]
    rotate_half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    want = x * c + rotate_half * s  # transformers' apply_rotary_pos_emb, in bf16
    v = qkv[:, (heads + kv) * d :].view(n, kv, d).clone()
    kernels.rope_cache(qkv, heads, kv, cos, signed, positions, slots, keys, values)
    assert torch.equal(qkv[:, : (heads + kv) * d].view(n, heads + kv, d), want)
    assert torch.equal(qkv[:, (heads + kv) * d :].view(n, kv, d), v)
    for i in range(n):
        assert torch.equal(keys[slots[i], :, positions[i]], want[i, heads:])
        assert torch.equal(values[slots[i], :, positions[i]], v[i])
    assert int((keys != 0).any(-1).sum()) == n * kv  # nothing else written
    before = keys.clone()
    with pytest.raises(ValueError, match="nothing was written"):
        kernels.rope_cache(qkv, heads, kv, cos, signed, torch.tensor([0, 1, 2, 3, 16]), slots, keys, values)
    assert torch.equal(keys, before)


# q·k runs in 32-wide blocks where the CPU has AVX512-BF16: head sizes of a partial block, one and a half, two
# (64 also takes the weighted sum of values in registers there).
@pytest.mark.parametrize("d", [16, 40, 64])
def test_decode_attention_is_each_rows_softmax_over_its_own_keys(d):
    g = torch.Generator().manual_seed(7)
    heads, kv, slots, capacity = 6, 2, 5, 40
    keys = torch.randn(slots, kv, capacity, d, generator=g).to(torch.bfloat16)
    values = torch.randn(slots, kv, capacity, d, generator=g).to(torch.bfloat16)
    q = torch.randn(4, heads * d, generator=g).to(torch.bfloat16)
    slot_ids, lengths = torch.tensor([3, 0, 4, 1]), torch.tensor([1, 17, 40, 9])
    got = kernels.decode_attention(q, keys, values, slot_ids, lengths, kv)
    for i in range(4):
        k = keys[slot_ids[i], :, : lengths[i]].float().repeat_interleave(heads // kv, 0)  # (heads, T, d)
        v = values[slot_ids[i], :, : lengths[i]].float().repeat_interleave(heads // kv, 0)
        want = torch.softmax(q[i].view(heads, 1, d).float() @ k.transpose(1, 2) / d**0.5, -1) @ v
        assert torch.allclose(got[i].float(), want.view(-1), atol=1e-2, rtol=1e-2)
        alone = kernels.decode_attention(q[i : i + 1].clone(), keys, values, slot_ids[i : i + 1].clone(),
                                        lengths[i : i + 1].clone(), kv)
        assert torch.equal(alone[0], got[i])
    with pytest.raises(ValueError, match="a length outside"):
        kernels.decode_attention(q, keys, values, slot_ids, torch.tensor([1, 17, 41, 9]), kv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_is_torch_max_first_index_with_ties_nan_and_infinities(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 1000, generator=g)
    x[1, 7] = x[1, 500] = float("nan")  # the first NaN wins, as torch.max propagates it
    x[2, 3], x[2, 990] = 99.0, float("nan")  # a NaN after the maximum still wins
    x[3, 10] = x[3, 600] = 99.0  # a tie: the first
    x[4] = float("-inf")  # nothing above -inf: index 0
    x[5, 999] = 50.0  # in the scalar tail after the vector blocks
    x[6, :3] = 77.0
    x[7] = 0.0
    x = x.to(dtype)
    rows = torch.cat([x, x[:, :997]], 1)[:, :1000]  # a row stride wider than the row
    for logits in (x, rows, x[:, :13], x[:1]):
        assert torch.equal(kernels.argmax(logits), logits.max(-1).indices)
    assert kernels.argmax(x.to(torch.float16)) is None  # another dtype: the caller uses torch
