"""A lean bf16 forward for Llama-family models on the CPU whose rows never depend on the rest of the batch.

Why: in bf16 the transformers forward's rows depend on the batch (the shared, left-padded KV cache changes each
row's attention reductions, and small LoRA GEMMs round differently for different row counts), so a request's
greedy answer could change with the traffic around it. Here every op a row goes through gives it the same bits
whatever else is in the batch (each checked in tests/serve/test_lean_llama.py):
- base weights prepacked for oneDNN, multiplied in products of row counts proven to give every row the same bits
  (packed.py); everything between the products runs on the real rows only;
- each request owns a slot of the KV cache (kv.SlotCache) and attends over exactly its own keys, each row on its
  own (kernels.decode_attention);
- LoRA with each row's own factors, summed on its own in a fixed order (kernels.lora_rows over factors.py's
  tables: each distinct adapter's factors stored once, rows grouped by rank so none is padded to another's);
- RMSNorm, and RoPE with the writes of each row's key and value into its cache slot, in one C kernel call each
  (kernels.rms_norm, kernels.rope_cache: transformers' bf16 results bit for bit);
- prompts prefilled together are packed into one batch, each through products of proven row counts, its own
  LoRA and its own causal attention (each token in the decode-attention kernel, over its prompt's keys up to its
  own), so that a prompt gives the same bits packed or alone, whole or in chunks;
- where a prefill's row counts give each row a decode step's bits (LeanLlama.decode_in_prefill), running rows
  take their decode step inside the newcomers' prefill: one pass over the weights instead of two.

Supports LlamaForCausalLM without attention or MLP biases (SmolLM2, TinyLlama, Llama 2/3) and LoRA on its seven
projections. Adapters must not touch other modules (embeddings, the head, modules_to_save) or use DoRA.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.serve import kernels
from lorakit.serve.backend import Chunk, Row
from lorakit.serve.factors import ATTN, MLP, LoraTables, PromptRows, RowGroup
from lorakit.serve.kv import SlotCache
from lorakit.serve.packed import PREFILL_MAX, PREFILL_ROWS, ROWS, Packed, exact_counts
from lorakit.serve.rope import RopeTable


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
        inter, hidden = _weight(mlp.gate_proj).shape[0], _weight(attn.o_proj).shape[0]
        # Where each projection's output sits in its product's fused output.
        self.columns = {"q_proj": (0, q), "k_proj": (q, q + k), "v_proj": (q + k, q + 2 * k), "o_proj": (0, hidden),
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
            # either kind does: then running rows may take their decode step in a prefill's products, and either
            # kind of product takes any of those counts.
            self.decode_in_prefill = all(
                exact_counts(p.out_features, p.in_features, threads, ROWS, (PREFILL_ROWS,)) for p in layers)
            """Whether running rows may take their decode step inside a prefill (see prefill's slots)."""
            if self.decode_in_prefill:
                for p in layers:
                    p.sizes[ROWS] = p.sizes[PREFILL_ROWS] = tuple(sorted({*p.sizes[ROWS], *p.sizes[PREFILL_ROWS]}))
        _trim()  # the probes' freed outputs otherwise stay mapped in the process
        self.lora = LoraTables(model, self.blocks)
        self.cache = SlotCache(len(self.blocks), self.kv_heads, self.head_dim, self.context)

    # ---- slots ----

    def reset(self) -> None:
        """Forget every slot and its cache."""
        self.cache.reset()

    def release(self, slot: int) -> None:
        self.cache.release(slot)

    # ---- adapters ----

    def check(self, key: str) -> None:
        """AdapterError if adapter `key` adapts anything the lean forward does not apply."""
        self.lora.check(key)

    # ---- forward ----

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], names: list[str | None], slots: list[int | None] | None = None
                ) -> tuple[list[int], torch.Tensor]:
        """Prefill prompts, their tokens packed into one batch: (slots, (n, vocab) bf16 logits of each prompt's last
        token). Prompt i goes into a new slot, or continues slot slots[i] after the tokens it holds (a running
        request's next token is such a one-token prompt: see decode_in_prefill; a long prompt's later chunk
        another).

        Each prompt's result is the same as when it is prefilled alone: its rows go through products of row counts
        proven equivalent (Packed.sizes), its LoRA products see only its own tokens, and its causal attention only
        its own keys."""
        slots, h, ends = self.hidden(prompts, names, slots)
        return slots, self.logits(h.index_select(0, torch.tensor(ends) - 1))

    @torch.inference_mode()
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(n, vocab) bf16 logits of the next token after each row of the last layer's output (n, C)."""
        return self.head(self._rms(h, self.norm))

    @torch.inference_mode()
    def hidden(self, prompts: list[list[int]], names: list[str | None], slots: list[int | None] | None = None
               ) -> tuple[list[int], torch.Tensor, list[int]]:
        """`prefill` up to the last layer's output: (slots, (P, C) output at every token of the prompts, packed,
        each prompt's end row). Slots it took are given back when it raises, and no slot's length changes then."""
        sizes = [len(p) for p in prompts]
        cache = self.cache
        held = slots or [None] * len(sizes)
        slots = []
        try:
            for n, s in zip(sizes, held, strict=True):
                slots.append(cache.take(n) if s is None else s)
            h, ends = self._hidden(prompts, names, slots, sizes)
        except BaseException:
            for slot, s in zip(slots, held, strict=False):
                if s is None:
                    cache.release(slot)
            raise
        return slots, h, ends

    def _hidden(self, prompts: list[list[int]], names: list[str | None], slots: list[int], sizes: list[int]
                ) -> tuple[torch.Tensor, list[int]]:
        cache = self.cache
        starts = [cache.lengths[s] for s in slots]
        cache.fit(max(start + n for start, n in zip(starts, sizes, strict=True)))
        ends = torch.tensor(sizes).cumsum(0).tolist()
        prompt_rows = PromptRows([(end - n, end) for n, end in zip(sizes, ends, strict=True)])
        total = ends[-1]
        tables = self.lora.for_rows(names)
        positions = torch.cat([torch.arange(start, start + n) for start, n in zip(starts, sizes, strict=True)])
        h = self.embed[torch.tensor([t for p in prompts for t in p])]  # (P, C)
        cos, sin = self.rope.tables(positions)
        hd, nq, nkv = self.head_dim, self.heads, self.kv_heads
        token_slots = torch.tensor(slots).repeat_interleave(torch.tensor(sizes))  # each token's cache slot
        keys = positions + 1  # each token attends over its prompt's keys up to its own, just written to the cache
        for i, block in enumerate(self.blocks):
            qkv = self._project(block.qkv, self._rms(h, block.norm1, block.qkv.padded_input(total, PREFILL_ROWS)),
                                tables[i].get("qkv"), prompt_rows)
            kernels.rope_cache(qkv, nq, nkv, cos, sin, positions, token_slots, cache.keys[i], cache.values[i])
            # Each token on its own, as a decode step's: a prompt's result is the same packed or alone, whole or in
            # chunks (a chunk's tokens find the earlier chunks' keys in the cache).
            out = kernels.decode_attention(qkv[:, : nq * hd], cache.keys[i], cache.values[i], token_slots, keys, nkv)
            h = self._block_rest(block, tables[i], h, out, prompt_rows)
        for slot, start, n in zip(slots, starts, sizes, strict=True):
            cache.lengths[slot] = start + n
        return h, ends

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], names: list[str | None]) -> torch.Tensor:
        """One token for each slot: (rows, vocab) bf16 logits, the head's output as it is (a greedy choice reads
        them directly, sampling widens its row). Every row's result is independent of the others."""
        b, cache = len(slots), self.cache
        cache.fit(max(cache.lengths[s] for s in slots) + 1)
        tables = self.lora.for_rows(names)
        positions = torch.tensor([cache.lengths[s] for s in slots])
        h = self.embed[torch.tensor(tokens)]  # (B, C)
        cos, sin = self.rope.tables(positions)
        slot_ids = torch.tensor(slots)
        lengths = positions + 1  # each row's keys, its new one included
        hd, nq, nkv = self.head_dim, self.heads, self.kv_heads
        for i, block in enumerate(self.blocks):
            qkv = self._project(block.qkv, self._rms(h, block.norm1, block.qkv.padded_input(b)), tables[i].get("qkv"))
            # RoPE on q and k in place, and each row's key and value into its slot at its position.
            kernels.rope_cache(qkv, nq, nkv, cos, sin, positions, slot_ids, cache.keys[i], cache.values[i])
            # Each row attends over exactly its own slot's keys, on its own (kernels.decode_attention).
            out = kernels.decode_attention(qkv[:, : nq * hd], cache.keys[i], cache.values[i], slot_ids, lengths, nkv)
            h = self._block_rest(block, tables[i], h, out)
        for s in slots:
            cache.lengths[s] += 1
        return self.logits(h)

    def _block_rest(self, block: Block, table: dict, h: torch.Tensor, attn: torch.Tensor,
                    prompt_rows: PromptRows | None = None) -> torch.Tensor:
        """Output projection and MLP with their residuals: h + o(attn), then + down(silu(gate)·up). The inputs of
        the gate_up and down products are written straight into their padded buffers (Packed.padded_input)."""
        n, rows = h.shape[0], ROWS if prompt_rows is None else PREFILL_ROWS
        h = h + self._project(block.o, attn, table.get("o"), prompt_rows)
        normed = self._rms(h, block.norm2, block.gate_up.padded_input(n, rows))
        gate, up = self._project(block.gate_up, normed, table.get("gate_up"), prompt_rows).chunk(2, -1)
        return h + self._project(block.down, torch.mul(F.silu(gate), up, out=block.down.padded_input(n, rows)),
                                 table.get("down"), prompt_rows)

    def _rms(self, h: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """LlamaRMSNorm (normalize in fp32, cast back, scale) in one kernel call, each row on its own; into `out`
        when given."""
        return kernels.rms_norm(h, weight, self.eps, out)

    @staticmethod
    def _project(product: Packed, x: torch.Tensor, groups: list[RowGroup] | None,
                 prompt_rows: PromptRows | None = None) -> torch.Tensor:
        """The fused base product plus each LoRA group's update on its targets' columns of the output.

        A decode step (prompt_rows None): row i is request i's token. A prefill: request i's tokens are rows
        prompt_rows.bounds[i]. Either way each row gets its request's adapter, summed on its own
        (kernels.lora_rows), so its update is the same alone as in any batch.
        """
        y = product(x, ROWS if prompt_rows is None else PREFILL_ROWS)
        for group in groups or ():
            rows, ids = (group.rows, group.adapter_ids) if prompt_rows is None else prompt_rows.token_rows(group)
            kernels.lora_rows(x, y, rows, ids, group.a, group.b, group.targets)
        return y


class LeanBackend:
    """The engine's Backend over LeanLlama: each request in a cache slot of its own, from its first chunk to its
    release."""

    name = "lean bf16"
    padded = False

    def __init__(self, model: nn.Module):
        self.forward = LeanLlama(model)
        self.decode_in_prefill = self.forward.decode_in_prefill
        self._slots: dict[int, int] = {}  # id(row) -> its cache slot

    def check(self, key: str) -> None:
        self.forward.check(key)

    def prefill(self, chunks: Sequence[Chunk], carried: Sequence[Row] = ()
                ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        rows = [*carried, *(c.row for c in chunks)]
        prompts = [[r.output[-1]] for r in carried] + [c.row.prompt[c.start : c.end] for c in chunks]
        held = [self._slots[id(r)] for r in carried] + [self._slots[id(c.row)] if c.start else None for c in chunks]
        lengths = self.forward.cache.lengths
        before = [None if s is None else lengths[s] for s in held]
        slots, h, ends = self.forward.hidden(prompts, [r.key for r in rows], held)
        try:
            last = self.forward.logits(h.index_select(0, torch.tensor(ends) - 1))
            every = [self.forward.logits(h[end - (c.end - c.start) : end]) if c.every else None
                     for c, end in zip(chunks, ends[len(carried) :], strict=True)]
        except BaseException:  # the caches as they were
            for slot, length in zip(slots, before, strict=True):
                if length is None:
                    self.forward.release(slot)
                else:
                    lengths[slot] = length
            raise
        for row, slot in zip(rows, slots, strict=True):
            self._slots[id(row)] = slot
        return last, every

    def decode(self, rows: Sequence[Row]) -> torch.Tensor:
        return self.forward.decode([self._slots[id(r)] for r in rows], [r.output[-1] for r in rows],
                                   [r.key for r in rows])

    def probe(self, row: Row, chunk: Chunk | None = None) -> None:
        lengths = self.forward.cache.lengths
        if chunk is None:
            slot = self._slots[id(row)]
            before = lengths[slot]
            try:
                self.forward.decode([slot], [row.output[-1]], [row.key])
            finally:
                lengths[slot] = before  # the key and value it wrote lie past the slot's length: unread
            return
        held = self._slots[id(row)] if chunk.start else None
        before = None if held is None else lengths[held]
        slots: list[int] = []
        try:
            slots, h, _ = self.forward.hidden([row.prompt[chunk.start : chunk.end]], [row.key], [held])
            self.forward.logits(h[-1:])
        finally:
            if slots and held is None:
                self.forward.release(slots[0])
            elif slots:
                lengths[held] = before

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
