"""A lean bf16 forward for Llama-family models on CPU whose greedy output does not depend on the batch.

Why not the transformers forward: in bf16 its rows depend on the rest of the batch (the shared, left-padded
KV cache changes each row's attention reductions, and small fp32 LoRA GEMMs round differently for different row
counts), so a request's greedy answer could change with the traffic around it. Here every op a decode row goes
through gives bit-identical results whatever else is in the batch (each checked in tests/serve/test_lean_llama.py):
- base weights are prepacked for oneDNN (packed.py; `torch.ops.mkldnn`, what torch.compile's CPU backend uses), 1.5x
  faster over SmolLM2's weights than `F.linear`, which re-lays out the weight on every call. oneDNN picks its kernel by
  the number of rows, and a row's bf16 result changes with the kernel (above 32 to 43 rows on SmolLM2's shapes,
  above 21 on a 264x32 head; bench/lean_products.py). So a decode step's products take at most ROWS rows at a
  time, and n rows are padded with zero rows to the smallest count (n itself where it can) proven to give every
  row the bits a ROWS-row product gives it (packed.exact_counts, probed once per shape): every row of every step
  meets one kernel's results. On SmolLM2 every count passes for all five shapes on an Intel host, and 8 rows
  unpadded take 19.0 against 22.6 ms for the 121 products. On an AMD EPYC only the down product's 1-row kernel
  differs; padding every down product to 32 rows for it, as the all-or-nothing probe before did, made an 8-row
  step 1.12x as long (bench/lean_ab.py, 12.5 against 14.0 ms). The inputs of padded
  products are written into persistent zero-padded buffers (Packed.slot); everything between the products runs
  on the real rows only;
- each request owns a slot of the KV cache, and in a decode step each row attends over exactly its own keys in
  one C kernel call per layer (serve/kernels.c, lk_decode_attention: fp32, each row and head on its own). It
  replaced sdpa over each row's keys rounded up to a bucket of 64 (masked), batched by width with the cache
  gathered per group: bench/lean_ab.py 0.927 at 8 rows, 0.903 at 32;
- LoRA with each row's own factors, in lorakit's C kernel (serve/kernels.c, lk_lora_rows): for each row, t = x·Aᵀ
  and then, on each adapted target's span of the fused output, the sum of t·(s·Bᵀ), in fp32, added to the bf16
  product and rounded once. Each row is summed on its own in a fixed order, so it does not depend on the other
  rows; each distinct adapter's factors are stored once, not copied for every row using it; rows are grouped by
  rank so none is padded to another adapter's rank. It replaced two `F.embedding_bag` sums (and the casts and
  the add around them) per product: one call instead of four ops (bench/lean_ab.py, BENCHMARKS.md). The tables
  are bf16, as the bf16 model holds its factors (half the bytes of fp32: 8 adapters in use then cost ~2% of a
  32-row step instead of ~5%), widened to fp32 as the kernel reads them. (The same bf16 tables summed by
  embedding_bag gave a prompt other bits alone than packed in about 4 of 10 processes, cause not found;
  tests/serve/test_lean_smollm2.py checks this in fresh processes.) Where the kernel cannot be built (no C
  compiler), the engine serves through the transformers forward instead;
- RMSNorm in one kernel call per norm (lk_rms_norm: fp32, each row's sum of squares in a fixed order) instead of
  six torch ops: bench/lean_ab.py 0.932 at 8 rows, 0.909 at 32; RoPE on q and k and the writes of each row's key
  and value into its cache slot in one call per layer (lk_rope_cache, transformers' bf16 RoPE bit for bit)
  instead of four ops and two index_put_: 0.946 at 8 rows, 0.953 at 32, the same tokens;
- prompts joining together are prefilled packed into one batch, each through products of proven row counts (64
  to 192 here), its own LoRA (each token with its request's adapter) and its own causal attention (prompts of up
  to SHORT_PROMPT tokens in the decode-attention kernel, each token over its prompt's cached keys: 0.81-0.86x the
  prefill of sdpa per prompt length; longer prompts through sdpa, batched with the prompts of their length), so a
  prompt's first token never depends on the batch either;
- where a prefill's row counts give each row the bits of a decode step's (LeanLlama.joins: on an AMD EPYC every
  count to 1024 did on SmolLM2's shapes, on an Intel host with AMX counts above 32-43 did not), the rows already
  running join the newcomers' prefill, each as a one-token prompt continuing its slot through the decode
  kernels: one pass over the weights per step instead of a prefill and then a decode step. With a request
  joining most steps (bench/lean_ab.py --joining) the engine made 874 tokens/s against 612 without joining, the
  same tokens.

Supports LlamaForCausalLM without attention or MLP biases (SmolLM2, TinyLlama, Llama 2/3) and LoRA on its seven
projections. Adapters must not touch other modules (embeddings, the head, modules_to_save) or use DoRA.
"""

from __future__ import annotations

import ctypes
import operator
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.errors import AdapterError
from lorakit.core.inject import wrappers
from lorakit.core.layers import MAGNITUDE, LoraLinear
from lorakit.core.state import ATTR
from lorakit.serve import kernels
from lorakit.serve.backend import Row
from lorakit.serve.kv import SlotCache
from lorakit.serve.packed import PREFILL_MAX, PREFILL_ROWS, ROWS, Packed, exact_counts
from lorakit.serve.rope import RopeTable

SHORT_PROMPT = 64  # prompts up to this long attend in the decode kernel when prefilled, longer ones through sdpa
ATTN = ("q_proj", "k_proj", "v_proj")
MLP = ("gate_proj", "up_proj")
PRODUCTS = {"qkv": ATTN, "o": ("o_proj",), "gate_up": MLP, "down": ("down_proj",)}
TARGETS = tuple(t for targets in PRODUCTS.values() for t in targets)


class Group(NamedTuple):
    """One fused product's LoRA for the rows whose adapters have the same ranks there, for kernels.lora_rows. The
    factors of each distinct adapter among them are stored once, in bf16."""

    rows: torch.Tensor | None
    """The batch rows in this group, ascending (None: every row)."""
    slot: torch.Tensor
    """(rows,) int64: each row's adapter, an index into the tables."""
    a: torch.Tensor
    """(adapters x in, Σr): row j·in + k is column k of adapter j's A, every adapted target's A stacked."""
    b: torch.Tensor
    """(adapters x Σr, out): row j·Σr + r is row r of adapter j's s·Bᵀ over the whole fused output (zero outside its
    target's span, which the kernel does not read)."""
    targets: object
    """kernels.lora_targets: each adapted target's ranks and span of the output."""


class Piece(NamedTuple):
    """One adapter's LoRA on one layer's fused product, as Group stacks it for each adapter of the group."""

    shape: tuple
    """((target, rank), ...): its rank on each target of the product it adapts, in the product's order."""
    a: torch.Tensor
    """(in, Σr) bf16: those targets' Aᵀ side by side."""
    b: torch.Tensor
    """(Σr, width) bf16: each target's s·Bᵀ on its span of the fused output, zero elsewhere."""


PIECES_KEPT = 32  # adapters whose pieces stay cached besides those of the current batch, least recently used out


def _current(probe: tuple, key: str) -> bool:
    """Whether adapter `key` is still the load its pieces were built from (probe: a block, target, the module
    there and its A then): the module still in the model, and its A for `key` the same tensor."""
    block, target, module, a = probe
    return block.module(target) is module and key in module.lora_A and module.lora_A[key] is a


def unsupported(model: nn.Module) -> str | None:
    """Why the lean forward cannot run this model (None when it can)."""
    cfg = getattr(model, "config", None)
    if type(model).__name__ != "LlamaForCausalLM" or cfg is None:
        return f"{type(model).__name__} is not a LlamaForCausalLM"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "the model has attention or MLP biases"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act is {cfg.hidden_act!r}, not 'silu'"
    if next(model.parameters()).device.type != "cpu":
        return "the model is not on the CPU"
    why = kernels.unavailable()
    if why is not None:
        return f"lorakit's C kernels are not available here: {why}"
    widest = max(cfg.hidden_size, cfg.intermediate_size)
    head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if widest > kernels.MAX_WIDTH or head > kernels.MAX_HEAD or head % 2:
        return (f"its widths ({widest}, heads of {head}) exceed the lean kernels' ({kernels.MAX_WIDTH}, "
                f"{kernels.MAX_HEAD}, even)")
    rope = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rope is None or getattr(rope, "rope_type", "default") not in ("default", "linear", "llama3"):
        return f"its rotary embedding ({getattr(rope, 'rope_type', None)!r}) changes with the sequence length"
    return None


class Block:
    """One decoder layer's weights: q,k,v and gate,up fused into one product each."""

    def __init__(self, layer: nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.layer = layer
        self.norm1 = _weight(layer.input_layernorm).to(torch.bfloat16)
        self.norm2 = _weight(layer.post_attention_layernorm).to(torch.bfloat16)
        self.qkv = Packed(torch.cat([_weight(getattr(attn, n)) for n in ATTN]))
        self.o = Packed(_weight(attn.o_proj))
        self.gate_up = Packed(torch.cat([_weight(getattr(mlp, n)) for n in MLP]))
        self.down = Packed(_weight(mlp.down_proj))
        q, k = _weight(attn.q_proj).shape[0], _weight(attn.k_proj).shape[0]
        inter = _weight(mlp.gate_proj).shape[0]
        # Where each projection's output sits in the fused outputs.
        hidden = _weight(attn.o_proj).shape[0]
        self.spans = {"q_proj": (0, q), "k_proj": (q, q + k), "v_proj": (q + k, q + 2 * k), "o_proj": (0, hidden),
                      "gate_proj": (0, inter), "up_proj": (inter, 2 * inter), "down_proj": (0, hidden)}
        self.widths = {"qkv": q + 2 * k, "o": hidden, "gate_up": 2 * inter, "down": hidden}

    def module(self, target: str) -> nn.Module:
        return getattr(self.layer.self_attn if target in ATTN + ("o_proj",) else self.layer.mlp, target)


def _weight(module: nn.Module) -> torch.Tensor:
    """The base model's weight of a module, also when lorakit has wrapped it (LoRA or modules_to_save)."""
    module = getattr(module, "base_layer", None) or getattr(module, "original_module", None) or module
    return module.weight.detach()


class LeanLlama:
    """Prefill and decode for requests in cache slots; LoRA per row by adapter name (None: the base model)."""

    def __init__(self, model: nn.Module):
        reason = unsupported(model)
        if reason:
            raise ValueError(f"the lean forward cannot run this model: {reason}")
        cfg = model.config
        self.model = model
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.context = cfg.max_position_embeddings
        inner = model.model
        self.rope = RopeTable(inner.rotary_emb, self.head_dim)
        with torch.no_grad():
            self.embed = _weight(inner.embed_tokens).to(torch.bfloat16)
            self.norm = _weight(inner.norm).to(torch.bfloat16)
            self.blocks = [Block(layer) for layer in inner.layers]
            self.head = Packed(_weight(model.lm_head))
            # Products go unpadded or larger where this machine's kernels allow it (exact_counts), per shape.
            threads = torch.get_num_threads()
            decode = tuple(range(1, ROWS))
            prefill = (*range(ROWS + 8, PREFILL_ROWS, 8), *range(PREFILL_ROWS + 16, PREFILL_MAX + 1, 16))
            layers = [p for b in self.blocks for p in (b.qkv, b.o, b.gate_up, b.down)]
            for p in layers + [self.head]:
                p.sizes[ROWS] = (*exact_counts(p.out_features, p.in_features, threads, ROWS, decode), ROWS)
                if p is not self.head:
                    p.sizes[PREFILL_ROWS] = tuple(sorted((PREFILL_ROWS, *exact_counts(
                        p.out_features, p.in_features, threads, PREFILL_ROWS, prefill))))
            # Where a PREFILL_ROWS-row product gives each row a ROWS-row product's bits, every proven count of
            # either kind does: then running rows may join a prefill's products (joins), and either kind of
            # product takes any of those counts.
            self.joins = all(exact_counts(p.out_features, p.in_features, threads, ROWS, (PREFILL_ROWS,))
                             for p in layers)
            if self.joins:
                for p in layers:
                    p.sizes[ROWS] = p.sizes[PREFILL_ROWS] = tuple(sorted({*p.sizes[ROWS], *p.sizes[PREFILL_ROWS]}))
        _trim()  # the probes' freed outputs otherwise stay in the process (~200 MB on SmolLM2)
        # Module paths whose adapters this forward applies; by path, as adapters loaded later wrap new modules.
        self.known = {f"model.layers.{i}.{'self_attn' if t in ATTN + ('o_proj',) else 'mlp'}.{t}": (i, t)
                      for i in range(len(self.blocks)) for t in TARGETS}
        self.cache = SlotCache(len(self.blocks), self.kv_heads, self.head_dim, self.context)
        self._factors: tuple | None = None  # ((adapter version, names), tables): see _tables
        self._pieces: dict[str, tuple] = {}  # adapter key -> (probe, pieces), least recently used first: _adapter
        self._stacks: dict[tuple, tuple] = {}  # (layer, product, shape) -> (pieces, a, b, targets): _stack

    # ---- slots ----

    def reset(self) -> None:
        """Forget every slot and its cache."""
        self.cache.reset()

    def release(self, slot: int) -> None:
        self.cache.release(slot)

    # ---- adapters ----

    def check(self, key: str) -> None:
        """AdapterError if adapter `key` adapts anything the lean forward does not apply."""
        self._adapter(key)

    def _adapter(self, key: str) -> list[dict[str, Piece]]:
        """Per layer: fused product -> adapter `key`'s Piece there (absent where it adapts nothing). Built once per
        load of the adapter and kept while it stays loaded and recently used (_tables trims the cache), so a batch
        that changes only puts cached pieces together: rebuilding every row's factors from the modules took 11-15
        ms per change of rows, at each request joining or leaving. AdapterError if the adapter changes anything
        the lean forward does not apply."""
        found = self._pieces.pop(key, None)
        if found is not None and _current(found[0], key):
            self._pieces[key] = found  # most recently used last
            return found[1]
        adapted: dict[tuple[int, str], list[tuple[str, LoraLinear]]] = {}  # (layer, product) -> its adapted targets
        paths: dict[tuple[int, str], str] = {}  # (layer, product) -> the path of its modules' parent
        probe = None  # (block, target, module, its A for `key`): what tells a reload, which replaces every tensor
        for path, module in wrappers(self.model):
            where = self.known.get(path)
            if where is not None:
                if key in getattr(module, MAGNITUDE, {}):
                    raise AdapterError(f"adapter uses DoRA at {path}, which the bf16 lean engine does not apply; "
                                       f"serve it with --dtype float32")
                if key in module.lora_A:
                    layer, target = where
                    product = next(p for p, targets in PRODUCTS.items() if target in targets)
                    adapted.setdefault((layer, product), []).append((target, module))
                    paths[(layer, product)] = path.rsplit(".", 1)[0]
                    probe = probe or (self.blocks[layer], target, module, module.lora_A[key])
                continue
            if key in getattr(module, "lora_A", {}) or key in getattr(module, "copies", {}):
                raise AdapterError(f"adapter changes {path}, which the bf16 lean engine does not apply (it adapts "
                                   f"only {', '.join(TARGETS)}); serve it with --dtype float32")
        pieces: list[dict[str, Piece]] = [{} for _ in self.blocks]
        for (layer, product), modules in adapted.items():
            order = PRODUCTS[product]
            modules.sort(key=lambda tm: order.index(tm[0]))
            shape = tuple((t, m.lora_A[key].shape[0]) for t, m in modules)
            total = sum(rank for _, rank in shape)
            if total > kernels.MAX_RANK:
                raise AdapterError(f"adapter's ranks add up to {total} in {paths[layer, product]}.{product}, more than "
                                   f"the bf16 lean engine's {kernels.MAX_RANK} per fused product; serve it with "
                                   f"--dtype float32")
            block = self.blocks[layer]
            b = torch.zeros(total, block.widths[product])
            r0 = 0
            for (target, rank), (_, m) in zip(shape, modules, strict=True):
                lo, hi = block.spans[target]
                b[r0 : r0 + rank, lo:hi] = m.lora_B[key].detach().float().t() * m.scaling[key]
                r0 += rank
            a = torch.cat([m.lora_A[key].detach().float() for _, m in modules]).t()
            pieces[layer][product] = Piece(shape, a.to(torch.bfloat16).contiguous(), b.to(torch.bfloat16))
        if probe is not None:  # an adapter on none of these modules has nothing to cache
            self._pieces[key] = (probe, pieces)
        return pieces

    def _tables(self, names: list[str | None]) -> list[dict[str, list[Group]]]:
        """Per layer: fused product -> the LoRA groups of the rows (see Group), rows grouped by the ranks their
        adapter has there. Built once per choice of rows (a decode step reuses its predecessor's) from each
        adapter's cached pieces; the stacked tables of a product are reused while its set of adapters stays."""
        state = getattr(self.model, ATTR, None)
        version = state.version if state else -1
        if self._factors is not None and self._factors[0] == (version, tuple(names)):
            return self._factors[1]
        if self._factors is None or self._factors[0][0] != version:  # adapters loaded or deleted since
            self._stacks.clear()
            for key in [k for k, (probe, _) in self._pieces.items() if not _current(probe, k)]:
                del self._pieces[key]
        rows_of: dict[str, list[int]] = {}
        for row, name in enumerate(names):
            if name is not None:
                rows_of.setdefault(name, []).append(row)
        pieces = {key: self._adapter(key) for key in sorted(rows_of)}  # sorted: one order for one set of adapters
        for key in list(self._pieces)[: max(0, len(self._pieces) - len(pieces) - PIECES_KEPT)]:
            if key not in pieces:  # least recently used first
                del self._pieces[key]
        placed: dict[tuple[str, ...], tuple] = {}  # a group's adapters -> (its rows or None, each row's adapter)
        tables = []
        for layer, block in enumerate(self.blocks):
            table = {}
            for product in PRODUCTS:
                by_shape: dict[tuple, list[str]] = {}
                for key, adapter in pieces.items():
                    piece = adapter[layer].get(product)
                    if piece is not None:
                        by_shape.setdefault(piece.shape, []).append(key)
                groups = []
                for shape, keys in by_shape.items():
                    group = tuple(keys)
                    if group not in placed:
                        rows = sorted(r for key in group for r in rows_of[key])
                        placed[group] = (None if len(rows) == len(names) else torch.tensor(rows),
                                         torch.tensor([group.index(names[r]) for r in rows]))
                    stack = self._stack(block, layer, product, shape, [pieces[k][layer][product] for k in group])
                    groups.append(Group(*placed[group], *stack))
                if groups:
                    table[product] = groups
            tables.append(table)
        self._factors = ((version, tuple(names)), tables)
        return tables

    def _stack(self, block: Block, layer: int, product: str, shape: tuple, pieces: list[Piece]) -> tuple:
        """(a, b, targets) of Group for adapters of one shape on one product: their pieces stacked, or the last
        stack of that product and shape when it holds the same pieces."""
        last = self._stacks.get((layer, product, shape))
        if last is not None and len(last[0]) == len(pieces) and all(map(operator.is_, last[0], pieces)):
            return last[1:]
        r0, spans = 0, []
        for target, rank in shape:
            spans.append((r0, rank, *block.spans[target]))
            r0 += rank
        stack = (torch.cat([p.a for p in pieces]), torch.cat([p.b for p in pieces]), kernels.lora_targets(spans))
        self._stacks[(layer, product, shape)] = (tuple(pieces), *stack)
        return stack

    # ---- forward ----

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], names: list[str | None], slots: list[int | None] | None = None
                ) -> tuple[list[int], torch.Tensor]:
        """Prefill prompts, their tokens packed into one batch: (slots, (n, vocab) bf16 logits of each prompt's last
        token). Prompt i goes into a new slot, or continues slot slots[i] after the tokens it holds (a running
        request's next token is such a one-token prompt: see `joins`).

        Each prompt's result is the same as when it is prefilled alone: its rows go through products of row counts
        proven equivalent (Packed.sizes), its LoRA products see only its own tokens, and its causal attention only
        its own keys."""
        sizes = [len(p) for p in prompts]
        cache = self.cache
        slots = [cache.take(n) if s is None else s for n, s in zip(sizes, slots or [None] * len(sizes), strict=True)]
        starts = [cache.lengths[s] for s in slots]
        cache.fit(max(start + n for start, n in zip(starts, sizes, strict=True)))
        ends = torch.tensor(sizes).cumsum(0).tolist()
        spans = Spans([(end - n, end) for n, end in zip(sizes, ends, strict=True)])
        total = ends[-1]
        tables = self._tables(names)
        positions = torch.cat([torch.arange(start, start + n) for start, n in zip(starts, sizes, strict=True)])
        h = self.embed[torch.tensor([t for p in prompts for t in p])]  # (P, C)
        cos, sin = self.rope.tables(positions)
        hd, nq, nkv = self.head_dim, self.heads, self.kv_heads
        token_slots = torch.tensor(slots).repeat_interleave(torch.tensor(sizes))  # each token's cache slot
        # Attention, by each prompt's own length (so a prompt takes the same path alone or packed): prompts of up to
        # SHORT_PROMPT tokens in one decode_attention call per layer, each token over its prompt's keys up to its
        # own, just written to the cache (each row on its own); longer ones through sdpa, those of one length
        # batched (sdpa's rows do not depend on the batch: each prompt's heads are separate work items). Checked
        # alone against packed in tests/serve/test_lean_llama.py.
        def rows_of(members: list[int]) -> torch.Tensor | None:
            return None if len(members) == len(sizes) else torch.cat([torch.arange(*spans.of[j]) for j in members])

        # A continued slot's tokens attend in the decode kernel too, as a decode step's do.
        short_members = [j for j, (n, start) in enumerate(zip(sizes, starts, strict=True))
                         if n <= SHORT_PROMPT or start]
        short = rows_of(short_members) if short_members else None  # their tokens (None: every token)
        short_slots = token_slots if short is None else token_slots[short]
        short_keys = (positions if short is None else positions[short]) + 1  # each token's keys, its own included
        by_length: dict[int, list[int]] = {}
        for j, (n, start) in enumerate(zip(sizes, starts, strict=True)):
            if n > SHORT_PROMPT and not start:
                by_length.setdefault(n, []).append(j)
        groups = [(n, len(members), rows_of(members)) for n, members in by_length.items()]
        for i, block in enumerate(self.blocks):
            qkv = self._project(block.qkv, self._rms(h, block.norm1, block.qkv.slot(total, PREFILL_ROWS)),
                                tables[i].get("qkv"), spans)
            kernels.rope_cache(qkv, nq, nkv, cos, sin, positions, token_slots, cache.keys[i], cache.values[i])
            qk = qkv[:, : (nq + nkv) * hd].view(total, nq + nkv, hd)  # q and k rotated in place
            v = qkv[:, (nq + nkv) * hd :].view(total, nkv, hd)
            out = None
            if short_members:
                q = qkv[:, : nq * hd] if short is None else qkv.index_select(0, short)[:, : nq * hd]
                got = kernels.decode_attention(q, cache.keys[i], cache.values[i], short_slots, short_keys, nkv)
                if short is None:
                    out = got
                else:
                    out = h.new_empty(total, nq * hd)
                    out.index_copy_(0, short, got)
            for n, count, tokens in groups:
                q_g, v_g = (qk, v) if tokens is None else (qk.index_select(0, tokens), v.index_select(0, tokens))
                q_g = q_g.view(count, n, nq + nkv, hd).transpose(1, 2)  # (prompts, H+KV, T, D)
                v_g = v_g.view(count, n, nkv, hd).transpose(1, 2)
                got = F.scaled_dot_product_attention(q_g[:, :nq], q_g[:, nq:], v_g, is_causal=True, enable_gqa=True)
                got = got.transpose(1, 2).reshape(count * n, nq * hd)
                if tokens is None:
                    out = got
                else:
                    out = h.new_empty(total, nq * hd) if out is None else out
                    out.index_copy_(0, tokens, got)
            h = self._block_rest(block, tables[i], h, out, spans)
        for slot, start, n in zip(slots, starts, sizes, strict=True):
            cache.lengths[slot] = start + n
        last = h.index_select(0, torch.tensor([end - 1 for end in ends]))
        return slots, self.head(self._rms(last, self.norm))

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], names: list[str | None]) -> torch.Tensor:
        """One token for each slot: (rows, vocab) bf16 logits, the head's output as it is (a greedy choice reads
        them directly, sampling widens its row). Every row's result is independent of the others."""
        b, cache = len(slots), self.cache
        cache.fit(max(cache.lengths[s] for s in slots) + 1)
        tables = self._tables(names)
        positions = torch.tensor([cache.lengths[s] for s in slots])
        h = self.embed[torch.tensor(tokens)]  # (B, C)
        cos, sin = self.rope.tables(positions)
        slot_ids = torch.tensor(slots)
        lengths = positions + 1  # each row's keys, its new one included
        hd, nq, nkv = self.head_dim, self.heads, self.kv_heads
        for i, block in enumerate(self.blocks):
            qkv = self._project(block.qkv, self._rms(h, block.norm1, block.qkv.slot(b)), tables[i].get("qkv"))
            # RoPE on q and k in place, and each row's key and value into its slot at its position.
            kernels.rope_cache(qkv, nq, nkv, cos, sin, positions, slot_ids, cache.keys[i], cache.values[i])
            # Each row attends over exactly its own slot's keys, on its own (kernels.decode_attention).
            out = kernels.decode_attention(qkv[:, : nq * hd], cache.keys[i], cache.values[i], slot_ids, lengths, nkv)
            h = self._block_rest(block, tables[i], h, out)
        for s in slots:
            cache.lengths[s] += 1
        return self.head(self._rms(h, self.norm))

    def _block_rest(self, block: Block, table: dict, h: torch.Tensor, attn: torch.Tensor,
                    spans: Spans | None = None) -> torch.Tensor:
        """Output projection and MLP with their residuals: h + o(attn), then + down(silu(gate)·up). The inputs of
        the gate_up and down products are written straight into their padded buffers (Packed.slot)."""
        n, rows = h.shape[0], ROWS if spans is None else PREFILL_ROWS
        h = h + self._project(block.o, attn, table.get("o"), spans)
        normed = self._rms(h, block.norm2, block.gate_up.slot(n, rows))
        gate, up = self._project(block.gate_up, normed, table.get("gate_up"), spans).chunk(2, -1)
        return h + self._project(block.down, torch.mul(F.silu(gate), up, out=block.down.slot(n, rows)),
                                 table.get("down"), spans)

    def _rms(self, h: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """LlamaRMSNorm (normalize in fp32, cast back, scale) in one kernel call, each row on its own; into `out`
        when given."""
        return kernels.rms_norm(h, weight, self.eps, out)

    @staticmethod
    def _project(packed: Packed, x: torch.Tensor, groups: list[Group] | None, spans: Spans | None = None
                 ) -> torch.Tensor:
        """The fused base product plus each LoRA group's update on its targets' spans of the output.

        A decode step (no spans): row i is request i's token. A prefill: request i's tokens are rows spans.of[i].
        Either way each row gets its request's adapter, summed on its own (kernels.lora_rows), so its update is the
        same alone as in any batch.
        """
        y = packed(x, ROWS if spans is None else PREFILL_ROWS)
        for group in groups or ():
            index, slot = (group.rows, group.slot) if spans is None else spans.tokens(group)
            kernels.lora_rows(x, y, index, slot, group.a, group.b, group.targets)
        return y


class Spans:
    """A prefill's packed prompts: request i's tokens are rows of[i] = (start, end). Each request's tokens use its
    adapter; a Group's token rows and their adapters are worked out once per prefill for every layer whose group
    has the same rows, as the decode step's are (LeanLlama._tables)."""

    def __init__(self, of: list[tuple[int, int]]):
        self.of = of
        self._tokens: dict[tuple, tuple] = {}

    def tokens(self, group: Group) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the token rows of the group's requests, or None for every row; each token's adapter slot)."""
        key = (tuple(group.slot.tolist()), None if group.rows is None else tuple(group.rows.tolist()))
        if key not in self._tokens:
            requests = range(len(group.slot)) if group.rows is None else group.rows.tolist()
            index = None if group.rows is None else torch.cat([torch.arange(*self.of[r]) for r in requests])
            counts = torch.tensor([self.of[r][1] - self.of[r][0] for r in requests])
            self._tokens[key] = index, group.slot.repeat_interleave(counts)
        return self._tokens[key]


class LeanBackend:
    """The engine's Backend over LeanLlama: each request in a cache slot of its own, from its prefill to its release."""

    name = "lean bf16"

    def __init__(self, model: nn.Module):
        self.forward = LeanLlama(model)
        self.decode_in_prefill = self.forward.joins
        self._slots: dict[int, int] = {}  # id(row) -> its cache slot

    def check(self, key: str) -> None:
        self.forward.check(key)

    def prefill(self, rows: Sequence[Row]) -> torch.Tensor:
        held = [self._slots.get(id(r)) for r in rows]
        prompts = [r.prompt if slot is None else [r.output[-1]] for r, slot in zip(rows, held, strict=True)]
        slots, logits = self.forward.prefill(prompts, [r.key for r in rows], held)
        for row, slot in zip(rows, slots, strict=True):
            self._slots[id(row)] = slot
        return logits

    def decode(self, rows: Sequence[Row]) -> torch.Tensor:
        return self.forward.decode([self._slots[id(r)] for r in rows], [r.output[-1] for r in rows],
                                   [r.key for r in rows])

    def release(self, rows: Sequence[Row]) -> None:
        for row in rows:
            slot = self._slots.pop(id(row), None)
            if slot is not None:
                self.forward.release(slot)

    def reset(self) -> None:
        self.forward.reset()
        self._slots.clear()


def _trim() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim; a no-op elsewhere). glibc raises its mmap
    threshold as large blocks are freed, so later mid-sized blocks come from the heap and stay mapped when freed."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
