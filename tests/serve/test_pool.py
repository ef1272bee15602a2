"""The adapter pool: paths stay under the root, the budget holds, busy adapters stay, adapters that cannot be served
are refused at load, refused loads change nothing."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file
from serve_support import make_adapters, save_adapter, tiny_model

import lorakit
from lorakit.core.io.peft import plain_name
from lorakit.core.state import state_of
from lorakit.serve.pool import AdapterNotFound, AdapterPool, PoolError


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


def edit_config(directory, **changes) -> None:
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def poison_weights(directory, value: float) -> None:
    path = directory / "adapter_model.safetensors"
    tensors = load_file(path)
    next(t for k, t in tensors.items() if "lora_B" in k)[0, 0] = value
    save_file(tensors, path)


@pytest.mark.parametrize("spoil, why", [
    (lambda d: poison_weights(d, float("nan")), "NaN or infinite"),
    (lambda d: poison_weights(d, float("inf")), "NaN or infinite"),
    (lambda d: edit_config(d, lora_alpha=1e30), "scales its update by 1.25e\\+29"),
    (lambda d: edit_config(d, bias="all"), "trains biases"),
    (lambda d: edit_config(d, rank_pattern={"(": 4}), "invalid regular expression"),
    (lambda d: edit_config(d, alpha_pattern={"q_proj": "8"}), "could not be loaded"),
])
def test_adapters_that_cannot_be_served_are_refused_at_load_and_change_nothing(root, spoil, why):
    model = tiny_model()
    pool = AdapterPool(model, root)
    pool.add("sql", "sql")
    names, before = list(state_of(model).names), weights(model)
    shutil.copytree(root / "e2e", root / "spoiled")
    spoil(root / "spoiled")
    with pytest.raises(lorakit.LoraError, match=why):
        pool.add("spoiled", "spoiled")
    assert pool.names() == ["sql"] and state_of(model).names == names
    after = weights(model)  # a module wrapped on the way stays wrapped, as after any unload: its weights stay
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors by their names in the unwrapped model."""
    return {plain_name(k): v.clone() for k, v in model.state_dict().items()}


def test_an_adapter_spoiled_on_disk_while_evicted_is_refused_when_reloaded(root):
    sizes = {n: (root / n / "adapter_model.safetensors").stat().st_size for n in ("sql", "chat")}
    pool = AdapterPool(tiny_model(), root, budget_bytes=max(sizes.values()) + 1)
    pool.add("sql", "sql")
    pool.add("chat", "chat")  # sql is evicted
    assert not pool.entries["sql"].resident
    edit_config(root / "sql", rank_pattern={"(": 4})
    with pytest.raises(lorakit.LoraError, match="invalid regular expression"):
        pool.acquire("sql")
    assert not pool.in_use and pool.entries["chat"].resident


@pytest.mark.parametrize("target", ["lorakit.json", "adapter_config.json", "adapter_model.safetensors"])
def test_no_adapter_file_is_read_through_a_link_out_of_the_root_and_errors_tell_nothing_of_outside(
        root, tmp_path, target):
    outside = tmp_path / "outside"
    outside.mkdir()
    messages = []
    for exists in (True, False):
        (outside / "secret").unlink(missing_ok=True)
        if exists:
            (outside / "secret").write_text("{}")
        d = root / f"linked{exists}"
        shutil.copytree(root / "sql", d)
        (d / target).unlink()
        os.symlink(outside / "secret", d / target)
        with pytest.raises(PoolError, match=f"{target} .* link that leads outside the adapter root") as e:
            AdapterPool(tiny_model(), root).add("x", d.name)
        messages.append(str(e.value).replace(d.name, "DIR"))
        assert str(outside) not in str(e.value) and "secret" not in str(e.value)
    assert messages[0] == messages[1]  # the same words whether the target exists or not


def test_concurrent_removes_of_one_adapter_give_one_success_and_adapter_not_found(root):
    pool = AdapterPool(tiny_model(), root)
    pool.add("sql", "sql")
    barrier = threading.Barrier(4)

    def remove() -> str:
        barrier.wait()
        try:
            pool.remove("sql")
            return "removed"
        except AdapterNotFound:
            return "not found"

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = sorted(ex.map(lambda _: remove(), range(4)))
    assert results == ["not found"] * 3 + ["removed"]
    with pytest.raises(AdapterNotFound):
        pool.acquire("sql")
