"""The adapter pool: paths stay under the root, the budget holds, busy adapters stay, refused loads change nothing."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from serve_support import make_adapters, save_adapter, tiny_model

import lorakit
from lorakit.core.state import state_of
from lorakit.serve.pool import AdapterPool, PoolError


@pytest.fixture
def root(tmp_path):
    make_adapters(tmp_path / "root")
    return tmp_path / "root"


def test_paths_that_lead_outside_the_adapter_root_are_refused(root, tmp_path):
    pool = AdapterPool(tiny_model(), root)
    outside = save_adapter(tmp_path / "outside", lorakit.LoraConfig(rank=2), seed=5)
    os.symlink(outside, root / "link_out")
    (root / "half").mkdir()
    os.symlink(outside / "adapter_model.safetensors", root / "half" / "adapter_model.safetensors")
    shutil.copy(outside / "adapter_config.json", root / "half" / "adapter_config.json")
    for bad, why in [("../outside", "contains '..'"), ("sql/../../outside", "contains '..'"),
                     (str(outside), "outside the adapter root"), ("link_out", "outside the adapter root"),
                     ("half", "outside the adapter root")]:
        with pytest.raises(PoolError, match=why):
            pool.add("x", bad)
    assert pool.names() == [] and getattr(pool.model, "_lorakit", None) is None
    assert pool.add("ok", str(root / "sql")).resident and pool.add("ok2", "e2e").resident


def test_runtime_loading_is_off_without_an_adapter_root(root):
    with pytest.raises(PoolError, match="--adapter-root"):
        AdapterPool(tiny_model()).add("sql", root / "sql")
    assert AdapterPool(tiny_model()).add("sql", root / "sql", trusted=True).resident


def test_idle_adapters_are_evicted_least_recently_used_first_and_reloaded_on_demand(root):
    sizes = {n: (root / n / "adapter_model.safetensors").stat().st_size for n in ("sql", "e2e", "chat")}
    pool = AdapterPool(tiny_model(), root, budget_bytes=sizes["e2e"] + sizes["sql"])
    pool.add("sql", "sql")
    pool.add("e2e", "e2e")
    pool.release(pool.acquire("sql"))  # sql is now the most recently used
    pool.add("chat", "chat")
    assert [n for n, e in pool.entries.items() if e.resident] == ["sql", "chat"]
    assert pool.resident_bytes() <= pool.budget_bytes and pool.evictions == 1
    key = pool.acquire("e2e")  # evicted: reloaded from disk, under a name the model has again
    assert key in state_of(pool.model).names and pool.entries["e2e"].resident
    assert pool.resident_bytes() <= pool.budget_bytes


def test_adapters_serving_requests_are_never_evicted(root):
    sizes = [(root / n / "adapter_model.safetensors").stat().st_size for n in ("sql", "e2e")]
    pool = AdapterPool(tiny_model(), root, budget_bytes=max(sizes) + 1)
    pool.add("sql", "sql")
    pool.add("e2e", "e2e")  # sql is idle: evicted to make room
    busy = pool.acquire("e2e")
    assert pool.acquire("sql") is None  # e2e is busy, so the sql request waits
    with pytest.raises(PoolError, match="serving requests"):
        pool.add("chat", "chat")
    pool.release(busy)
    assert pool.acquire("sql") is not None and not pool.entries["e2e"].resident


def test_a_refused_load_changes_nothing(root, tmp_path):
    model = tiny_model()
    pool = AdapterPool(model, root)
    pool.add("sql", "sql")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = list(state_of(model).names)
    save_adapter(root / "wide", lorakit.LoraConfig(rank=4), seed=1, vocab=300)  # another base model's adapter
    (root / "broken").mkdir()
    (root / "broken" / "adapter_config.json").write_text("{not json")
    for bad, why in [("wide", "vocab_size|base|shape"), ("broken", "not valid JSON"), ("missing", "does not exist")]:
        with pytest.raises(lorakit.AdapterFileError, match=why):
            pool.add("sql", bad)
    assert state_of(model).names == names and pool.entries["sql"].resident
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
