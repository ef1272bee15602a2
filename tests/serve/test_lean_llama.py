"""The lean bf16 forward: the transformers model's numbers, and rows that never depend on the rest of the batch."""

from __future__ import annotations

import concurrent.futures
import itertools
import random

import openai
import pytest
import torch
from serve_support import save_adapter, tiny_model, tiny_server, tiny_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

import lorakit
from lorakit.serve import factors, kernels, llama
from lorakit.serve.engine import Engine, Event
from lorakit.serve.hf import TransformersBackend
from lorakit.serve.llama import LeanBackend, LeanLlama, unsupported
from lorakit.serve.pool import AdapterPool
from lorakit.serve.sampling import SamplingParams


def adapted_model() -> torch.nn.Module:
    """tiny_model in bf16 with two adapters of different ranks and targets (random non-zero B)."""
    model = tiny_model().to(torch.bfloat16)
    lorakit.inject(model, lorakit.LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj")), "a")
    lorakit.inject(model, lorakit.LoraConfig(rank=8, alpha=8, targets=("q_proj", "o_proj", "gate_proj")), "b")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def hf_logits(model, ids: list[int], adapter: str | None) -> torch.Tensor:
    with torch.no_grad(), lorakit.adapter_rows(model, [adapter]):
        return model(torch.tensor([ids])).logits[0, -1].float()


def test_the_lean_forward_gives_the_transformers_logits():
    model = adapted_model()
    lean = LeanLlama(model)
    prompt = [5, 9, 17, 3, 44, 2, 90, 61]
    for adapter in (None, "a", "b"):
        (slot,), first = lean.prefill([prompt], [adapter])
        token = int(first[0].argmax())
        second = lean.decode([slot], [token], [adapter])[0]
        lean.release(slot)
        # The same bf16 model up to summation order (products of 32 rows, a decode step's masked bucket of 64
        # keys) and, with an adapter, LoRA in fp32 here against bf16 in the transformers model.
        torch.testing.assert_close(first[0].float(), hf_logits(model, prompt, adapter), atol=2e-2, rtol=0)
        torch.testing.assert_close(second.float(), hf_logits(model, prompt + [token], adapter), atol=2e-2, rtol=0)


def test_targets_of_one_adapter_with_different_scalings_get_each_their_own():
    """An adapter whose targets scale differently (PEFT's alpha_pattern) takes the per-rank scaling path."""
    model = adapted_model()
    for path, module in lorakit.core.inject.wrappers(model):
        if "a" in module.scaling:
            module.scaling["a"] = 0.5 if path.endswith("q_proj") else 3.0
    lean = LeanLlama(model)
    prompt = [5, 9, 17, 3, 44, 2, 90, 61]
    (slot,), first = lean.prefill([prompt], ["a"])
    token = int(first[0].argmax())
    second = lean.decode([slot], [token], ["a"])[0]
    torch.testing.assert_close(first[0].float(), hf_logits(model, prompt, "a"), atol=2e-2, rtol=0)
    torch.testing.assert_close(second.float(), hf_logits(model, prompt + [token], "a"), atol=2e-2, rtol=0)


def test_every_row_is_bit_identical_alone_and_in_any_batch():
    """51 rows (more than one product takes), three adapter choices of different ranks, prompts of 1 to 80
    tokens (two attention widths, three of one long length) prefilled alone and packed together, rows in another
    order than their cache slots, slots reused."""
    model = adapted_model()
    lean = LeanLlama(model)
    rng = random.Random(0)
    jobs = [([rng.randrange(5, 260) for _ in range(rng.randrange(1, 30 if i % 5 else 80))], (None, "a", "b")[i % 3])
            for i in range(40)]
    jobs += [([rng.randrange(5, 260) for _ in range(12)], (None, "a", "b")[i % 3]) for i in range(8)]  # one length
    jobs += [([rng.randrange(5, 260) for _ in range(70)], (None, "a", "b")[i % 3]) for i in range(3)]  # long
    steps = 5

    def alone(prompt: list[int], adapter: str | None) -> list[torch.Tensor]:
        (slot,), logits = lean.prefill([prompt], [adapter])
        out = [logits[0]]
        for _ in range(steps):
            out.append(lean.decode([slot], [int(out[-1].argmax())], [adapter])[0])
        lean.release(slot)
        return out

    expected = [alone(*job) for job in jobs]
    longs = [i for i, (prompt, _) in enumerate(jobs) if len(prompt) == 70]  # the three packed together
    together, logits = lean.prefill([jobs[i][0] for i in longs], [jobs[i][1] for i in longs])
    assert all(torch.equal(logits[k], expected[i][0]) for k, i in enumerate(longs))
    for slot in together:
        lean.release(slot)
    slots, got = [], []
    order = list(range(len(jobs)))
    rng.shuffle(order)
    for k in range(0, len(order), 7):  # packed 7 prompts at a time, in shuffled order: row i's slot is not i
        chosen = [jobs[i] for i in order[k : k + 7]]
        new, logits = lean.prefill([p for p, _ in chosen], [a for _, a in chosen])
        slots += new
        got += [[row] for row in logits]
    jobs = [jobs[i] for i in order]
    expected = [expected[i] for i in order]
    for _ in range(steps):
        logits = lean.decode(slots, [int(g[-1].argmax()) for g in got], [a for _, a in jobs])
        for g, row in zip(got, logits, strict=True):
            g.append(row)
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert all(torch.equal(x, y) for x, y in zip(e, g, strict=True)), f"row {i} {jobs[i][1]} differs"


def test_every_base_product_takes_a_row_count_proven_to_give_the_same_bits(monkeypatch):
    """The mechanism behind the invariance above: oneDNN picks its kernel by row count, so every decode product
    takes ROWS rows and every prefill product PREFILL_ROWS, zero-padded, except where exact_counts proved other
    counts equivalent for that shape on this machine (Packed.sizes): then decode products take the rows there are
    (at most ROWS) where they can and prefill products up to PREFILL_MAX in steps of 16."""
    model = adapted_model()
    lean = LeanLlama(model)
    seen: list[tuple[str, llama.Packed, int]] = []
    phase = "prefill"
    product = llama.Packed.product
    monkeypatch.setattr(llama.Packed, "product",
                        lambda self, x: seen.append((phase, self, x.shape[0])) or product(self, x))
    batches = ([[5, 6, 7]], [list(range(5, 5 + n)) for n in (3, 70, 9)], [[7, 8]] * (llama.ROWS + 3),
               [list(range(5, 105))] * 3)
    for prompts in batches:
        phase = "prefill"
        slots, logits = lean.prefill(prompts, ["a"] * len(prompts))
        phase = "decode"
        lean.decode(slots, logits.argmax(-1).tolist(), ["b"] * len(slots))
        for slot in slots:
            lean.release(slot)
    for phase, packed, n in seen:
        # The head takes a prefill's last rows like a decode step's products.
        kind = llama.ROWS if phase == "decode" or packed is lean.head else llama.PREFILL_ROWS
        assert n in packed.sizes.get(kind, (kind,))
    tokens = [sum(map(len, prompts)) for prompts in batches]  # 3, 82, 70, 300
    for block in lean.blocks:
        for packed in (block.qkv, block.o, block.gate_up, block.down):
            most = max(packed.sizes.get(llama.PREFILL_ROWS, (llama.PREFILL_ROWS,)))
            count = sum(phase == "prefill" and p is packed for phase, p, _ in seen)
            assert count == sum(-(-t // most) for t in tokens)  # the fewest products the sizes allow


def test_the_row_count_probe_rejects_a_kernel_that_sums_in_another_order_for_few_rows(monkeypatch):
    """exact_counts must catch a kernel whose rows change with the row count, even one that differs from the
    ROWS-row kernel only in fp32 rounding and only for a single row: here a one-row product accumulated in fp64."""
    product = llama.Packed.product
    original = llama.Packed.__init__

    def init(self, weight):
        original(self, weight)
        self.weight_plain = weight.detach().to(torch.bfloat16)

    def by_count(self, x):
        if x.shape[0] == 1:
            return (x.double() @ self.weight_plain.double().t()).to(torch.bfloat16)
        return product(self, x)

    llama.exact_counts.cache_clear()
    monkeypatch.setattr(llama.Packed, "__init__", init)
    monkeypatch.setattr(llama.Packed, "product", by_count)
    try:
        counts = llama.exact_counts(512, 64, torch.get_num_threads(), llama.ROWS, tuple(range(1, llama.ROWS)))
        assert 1 not in counts
    finally:
        llama.exact_counts.cache_clear()


def test_the_cache_grows_under_running_rows_without_changing_them():
    model = adapted_model()
    lean = LeanLlama(model)
    (short,), _ = lean.prefill([[7, 8, 9]], ["a"])
    before = lean.cache.keys[0][short, :, :3].clone()
    (long,), _ = lean.prefill([list(range(5, 85))], ["b"])  # past the first 64-token capacity: every layer reallocated
    assert lean.cache.keys[0].shape[2] >= 80 and torch.equal(lean.cache.keys[0][short, :, :3], before)
    assert lean.cache.lengths[short] == 3 and lean.cache.lengths[long] == 80


def test_only_bf16_llama_models_on_the_cpu_take_the_lean_forward(tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=300)).to(torch.bfloat16)
    assert "LlamaForCausalLM" in unsupported(gpt2)
    with pytest.raises(ValueError, match="cannot run this model"):
        LeanLlama(gpt2)
    fp32 = tiny_model()
    assert isinstance(Engine(fp32, tiny_tokenizer(), AdapterPool(fp32)).backend, TransformersBackend)
    bf16 = tiny_model().to(torch.bfloat16)
    assert isinstance(Engine(bf16, tiny_tokenizer(), AdapterPool(bf16)).backend, LeanBackend)
    assert isinstance(Engine(bf16, tiny_tokenizer(), AdapterPool(bf16), lean=False).backend, TransformersBackend)
    # RoPE from a table needs a fixed inv_freq: dynamic scaling changes it with the sequence length.
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    dynamic = LlamaForCausalLM(cfg).to(torch.bfloat16)
    assert "rotary" in unsupported(dynamic)
    assert isinstance(Engine(dynamic, tiny_tokenizer(), AdapterPool(dynamic)).backend, TransformersBackend)


def test_without_the_lora_kernel_the_engine_serves_through_transformers(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels.LIBRARY, "_loaded", (None, "no C compiler found (the test says so)"))
    path = save_adapter(tmp_path / "a", lorakit.LoraConfig(rank=4, targets=("q_proj", "v_proj")), seed=3)
    model = tiny_model().to(torch.bfloat16)
    assert "no C compiler found" in unsupported(model)
    pool = AdapterPool(model, tmp_path)
    engine = Engine(model, tiny_tokenizer(), pool)
    assert isinstance(engine.backend, TransformersBackend)
    pool.add("a", path)
    events: list[Event] = []
    engine.submit([5, 9, 17], "a", SamplingParams(max_tokens=3, ignore_eos=True), events.append)
    engine.run_until_idle()
    assert events[-1].finish_reason == "length", events[-1].error
    assert len([t for e in events for t in e.token_ids]) == 3


@pytest.mark.parametrize("config, problem", [
    (lorakit.LoraConfig(rank=4, targets=("q_proj", "embed_tokens")), "model.embed_tokens"),
    (lorakit.LoraConfig(rank=4, targets=("v_proj",), modules_to_save=("lm_head",)), "lm_head"),
    (lorakit.LoraConfig(rank=520, targets=("q_proj", "v_proj")), "self_attn.qkv"),  # 1040 ranks in one product
])
def test_an_adapter_the_lean_forward_cannot_apply_is_refused_at_load_naming_the_module(tmp_path, config, problem):
    path = save_adapter(tmp_path / "odd", config, seed=3)
    model = tiny_model().to(torch.bfloat16)
    pool = AdapterPool(model, tmp_path)
    engine = Engine(model, tiny_tokenizer(), pool)
    with pytest.raises(lorakit.AdapterError, match="--dtype float32 to use the transformers forward") as e:
        pool.add("odd", path)
    assert problem in str(e.value)
    assert not pool.names() and not lorakit.core.inject.state_of(model).names  # refused: nothing loaded
    events: list[Event] = []
    engine.submit([5, 6, 7], None, SamplingParams(max_tokens=4, temperature=0), events.append)
    engine.run_until_idle()
    assert events[-1].finish_reason in ("length", "stop")
    trusted = AdapterPool(model, tmp_path)
    trusted.add("odd", path, trusted=True)  # as `lorakit serve --adapter` loads before the engine exists
    with pytest.raises(lorakit.AdapterError, match=problem):
        Engine(model, tiny_tokenizer(), trusted)


def test_a_lean_engine_built_after_a_merge_serves_the_merged_weights(tmp_path):
    path = save_adapter(tmp_path / "m", lorakit.LoraConfig(rank=4, targets="all-linear"), seed=5)
    model = tiny_model().to(torch.bfloat16)
    pool = AdapterPool(model, tmp_path)
    key = pool.add("m", path).key
    prompt = [[5, 6, 7, 8, 9]]
    _, unmerged = Engine(model, tiny_tokenizer(), pool).backend.forward.prefill(prompt, [key])
    _, base = LeanLlama(tiny_model().to(torch.bfloat16)).prefill(prompt, [None])
    lorakit.merge(model, key)
    _, merged = Engine(model, tiny_tokenizer(), pool, merged="m").backend.forward.prefill(prompt, [None])
    torch.testing.assert_close(merged, unmerged, atol=5e-2, rtol=0)  # bf16 weights rounded once after merging
    assert (merged - base).abs().max() > 0.2  # and the adapter is really in them


def test_concurrent_mixed_requests_to_a_bf16_server_match_their_solo_runs(tmp_path):
    with tiny_server(tmp_path, dtype=torch.bfloat16) as served:
        assert isinstance(served.engine.backend, LeanBackend)
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0)

        def complete(model: str, prompt: str) -> str:
            return client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                             extra_body={"ignore_eos": True}).choices[0].text

        jobs = [("tiny", "one"), ("sql", "two two"), ("e2e", "three"), ("sql", "four"), ("tiny", "five five")] * 2
        solo = [complete(*job) for job in jobs]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(lambda job: complete(*job), jobs))
        assert together == solo


def test_an_adapter_loaded_after_the_engine_started_is_applied(tmp_path):
    path = save_adapter(tmp_path / "late", lorakit.LoraConfig(rank=4, targets=("o_proj", "up_proj")), seed=9)
    model = tiny_model().to(torch.bfloat16)
    pool = AdapterPool(model, tmp_path)
    engine = Engine(model, tiny_tokenizer(), pool)  # the lean forward is built before any module is wrapped
    pool.add("late", path)
    outputs = {}
    for adapter in (None, "late"):
        events: list[Event] = []
        engine.submit([5, 6, 7], adapter, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True), events.append)
        engine.run_until_idle()
        assert events[-1].finish_reason == "length", events[-1].error
        outputs[adapter] = [t for e in events for t in e.token_ids]
    assert outputs["late"] != outputs[None]


def test_an_adapter_reloaded_under_its_key_is_served_with_its_new_factors(tmp_path):
    """The lean forward keeps each adapter's factors by key, and the pool reloads an evicted adapter under the same
    key from a file that may have changed since: the reload's factors must be the ones used, as by a new forward."""
    config = lorakit.LoraConfig(rank=4, targets=("q_proj", "v_proj", "up_proj"))
    first, second = save_adapter(tmp_path / "one", config, seed=1), save_adapter(tmp_path / "two", config, seed=2)
    model = tiny_model().to(torch.bfloat16)
    lorakit.load_adapter(model, first, name="k")
    lean = LeanLlama(model)

    def first_logits(forward: LeanLlama) -> torch.Tensor:
        (slot,), logits = forward.prefill([[5, 9, 17]], ["k"])
        forward.release(slot)
        return logits[0]

    old = first_logits(lean)
    lorakit.delete_adapter(model, "k")
    lorakit.load_adapter(model, second, name="k")
    lean.check("k")  # admission looks the adapter up before the batch does
    assert torch.equal(first_logits(lean), first_logits(LeanLlama(model)))
    assert not torch.equal(first_logits(lean), old)


def test_the_lean_forward_keeps_the_factors_of_a_bounded_number_of_adapters(tmp_path):
    config = lorakit.LoraConfig(rank=2, targets=("q_proj",))
    model = tiny_model().to(torch.bfloat16)
    lean = LeanLlama(model)
    for i in range(factors.ADAPTERS_KEPT + 6):
        lorakit.load_adapter(model, save_adapter(tmp_path / f"a{i}", config, seed=i), name=f"a{i}")
        slots, _ = lean.prefill([[5, 6]] * 2, [f"a{i}", f"a{i // 2}"])
        for slot in slots:
            lean.release(slot)
    assert len(lean.lora.adapters) <= factors.ADAPTERS_KEPT + 2


def test_a_running_row_continued_as_a_one_token_prompt_gets_its_decode_step_bits():
    """LeanLlama.prefill continuing a slot is what a running row goes through when it joins newcomers' prefill;
    where the forward allows that (decode_in_prefill: one kernel's results for a decode step's and a prefill's row
    counts), its logits and cache must be exactly a decode step's, beside new prompts of any length."""
    model = adapted_model()
    lean = LeanLlama(model)
    if not lean.decode_in_prefill:
        pytest.skip("this machine's oneDNN kernels differ between decode and prefill row counts: rows never join")
    rng = random.Random(1)
    prompts = [[rng.randrange(5, 260) for _ in range(n)] for n in (3, 9, 1)]
    names = ["a", None, "b"]
    newcomers = [[rng.randrange(5, 260) for _ in range(n)] for n in (4, 70)]  # 70: past the first cache bucket
    results = []
    for joined in (False, True):
        slots, logits = lean.prefill(prompts, names)
        tokens = logits.argmax(-1).tolist()
        if joined:
            got, out = lean.prefill([[t] for t in tokens] + newcomers, names + ["b", "a"], slots + [None, None])
            assert got[:3] == slots
            alone = [lean.prefill([p], [a])[1][0] for p, a in zip(newcomers, ["b", "a"], strict=True)]
            assert all(torch.equal(out[3 + i], row) for i, row in enumerate(alone))
            out = out[:3]
        else:
            out = lean.decode(slots, tokens, names)
        results.append((out, lean.decode(slots, out.argmax(-1).tolist(), names)))  # the next step reads the cache
        lean.reset()
    (decoded, after), (joined, after_joined) = results
    assert torch.equal(decoded, joined) and torch.equal(after, after_joined)


def test_a_prompt_prefilled_in_chunks_gives_the_bits_it_gives_whole():
    """A long prompt's chunks continue its slot: every token attends over the keys the earlier chunks wrote, as
    over its own prompt's when prefilled whole, and its logits at every position are the same bits."""
    model = adapted_model()
    lean = LeanLlama(model)
    rng = random.Random(3)
    prompt = [rng.randrange(5, 260) for _ in range(90)]
    (whole,), h_whole, _ = lean.hidden([prompt], ["b"])
    whole_next = lean.decode([whole], [7], ["b"])
    cuts = [0, 1, 17, 64, 65, 90]  # chunk edges across the cache's 64-token bucket
    slot = None
    pieces = []
    for start, end in itertools.pairwise(cuts):
        other = [rng.randrange(5, 260) for _ in range(start % 7 + 1)]  # packed beside an unrelated prompt
        slots, h, ends = lean.hidden([prompt[start:end], other], ["b", "a"], [slot, None])
        slot = slots[0]
        lean.release(slots[1])
        pieces.append(h[: ends[0]])
    assert torch.equal(torch.cat(pieces), h_whole)
    assert torch.equal(lean.logits(torch.cat(pieces)), lean.logits(h_whole))
    assert torch.equal(lean.decode([slot], [7], ["b"]), whole_next)  # the caches hold the same keys and values


@pytest.mark.parametrize("decode_in_prefill", [True, False])
def test_requests_joining_a_running_batch_get_their_solo_tokens(tmp_path, decode_in_prefill):
    """Requests arriving while others run (each prefilled while they decode, the running rows joining that pass
    where the forward allows it, else a prefill and then a decode step) give what they give alone."""
    pool = AdapterPool(tiny_model().to(torch.bfloat16), tmp_path)
    pool.add("a", save_adapter(tmp_path / "a", lorakit.LoraConfig(rank=4, targets=("q_proj", "v_proj")), seed=1))
    pool.add("b", save_adapter(tmp_path / "b", lorakit.LoraConfig(rank=8, targets=("o_proj", "up_proj")), seed=2))
    engine = Engine(pool.model, tiny_tokenizer(), pool)
    if decode_in_prefill and not engine.backend.decode_in_prefill:
        pytest.skip("this machine's oneDNN kernels differ between decode and prefill row counts: rows never join")
    engine.backend.decode_in_prefill = decode_in_prefill
    rng = random.Random(2)
    jobs = [([rng.randrange(5, 260) for _ in range(rng.choice((1, 5, 12, 70)))], (None, "a", "b")[i % 3],
             rng.randrange(3, 9)) for i in range(10)]

    def run(schedule: list[int]) -> list[list[int]]:
        """Submit job i before step schedule[i]; each job's tokens."""
        out: list[list[int]] = [[] for _ in jobs]
        for step in range(max(schedule) + 1):
            for i in (i for i, at in enumerate(schedule) if at == step):
                prompt, adapter, new = jobs[i]
                engine.submit(prompt, adapter, SamplingParams(max_tokens=new, temperature=0, ignore_eos=True),
                              lambda e, out=out[i]: out.extend(e.token_ids))
            engine.step()
        engine.run_until_idle()
        return out

    solo = [run([0 if j == i else -1 for j in range(len(jobs))])[i] for i in range(len(jobs))]
    assert run([0, 0, 1, 2, 2, 2, 4, 7, 7, 9]) == solo
