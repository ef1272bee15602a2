"""prefix-layer in PEFT's PREFIX_TUNING format: PEFT loads our files with the logits of lorakit's prefixed model,
with the config PEFT itself writes, for any prefix depth and with a classification head."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tiny import tiny_bert, tiny_gpt2, tiny_llama
from transformers import LlamaForSequenceClassification

from lorakit.core.config import LoraConfig
from lorakit.methods import METHODS, MethodOptions, load_method
from lorakit.methods.prefix import ATTRIBUTE, insert_prefix, save_prefix_tuning

peft = pytest.importorskip("peft")

PREFIX = 4
# Left padding: the real tokens of row 0 start at position 3.
MASK = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 9, [0, 1, 1, 1, 1, 1, 1, 1, 1]])


def tiny_llama_classifier(seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    config = tiny_llama().config
    config.num_labels = 3
    return LlamaForSequenceClassification(config).eval()


def trained(make, name: str = "prefix-layer", seed: int = 5):
    """`make()` with method `name`, its trainable tensors moved off their init as training would; and its Export."""
    model = make()
    torch.manual_seed(seed)
    export = METHODS[name].prepare(model, LoraConfig(), MethodOptions(prefix_length=PREFIX))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return model, export


def peft_model(make, directory):
    """PEFT's model from our directory; fails on any warning about missing, unexpected or mismatched keys."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = peft.PeftModel.from_pretrained(make(), str(directory)).eval()
    said = [str(w.message) for w in caught]
    assert not [s for s in said if any(k in s.lower() for k in ("missing", "unexpected", "mismatch", "not init"))]
    return theirs


def peft_logits(theirs, ids: torch.Tensor, **kw) -> torch.Tensor:
    try:
        return theirs(input_ids=ids, attention_mask=MASK, **kw).logits
    except ValueError as e:
        # PEFT 0.21's sequence-classification prefix tuning looks for a `past_key_values` parameter in the model's
        # forward, which transformers 5 renamed `cache`; make the call its _prefix_tuning_forward would make.
        if kw or "does not support past key values" not in str(e):
            raise
    prefix = torch.ones(ids.shape[0], theirs.active_peft_config.num_virtual_tokens, dtype=MASK.dtype)
    return theirs.base_model(input_ids=ids, attention_mask=torch.cat([prefix, MASK], dim=1),
                             cache=theirs.get_prompt(ids.shape[0])).logits


def assert_same_logits(ours, theirs, ids: torch.Tensor, **kw) -> None:
    with torch.no_grad():
        expected = peft_logits(theirs, ids, **kw)
        got = ours(input_ids=ids, attention_mask=MASK, **kw).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_peft_loads_a_saved_prefix_layer_with_identical_logits(make, ids, tmp_path):
    model, export = trained(make)
    export.write(model, tmp_path)
    assert {"trained.safetensors", "lorakit_method.json", "adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in tmp_path.iterdir()}
    theirs = peft_model(make, tmp_path)
    assert_same_logits(model, theirs, ids)
    # Positions counted from the first real token (as generate() passes them): both shift them by l_p.
    assert_same_logits(model, theirs, ids, position_ids=(MASK.cumsum(-1) - 1).clamp(min=0))


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_our_prefix_tuning_config_is_the_one_peft_writes_for_the_model(make, tmp_path):
    model, export = trained(make)
    export.write(model, tmp_path / "ours")
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PREFIX)
    peft.get_peft_model(make(), config).save_pretrained(str(tmp_path / "theirs"))
    ours, theirs = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("ours", "theirs"))
    theirs.pop("peft_version")  # the library never imports peft, so it cannot know the version
    assert {k: ours.get(k) for k in theirs} == theirs


def test_a_prefix_shallower_than_the_model_also_loads_in_peft(ids, tmp_path):
    # Blocks past the prefix's depth compute the prefix positions from the rows below (causally, never from the
    # input), so their keys and values are still fixed.
    model = tiny_llama()
    insert_prefix(model, torch.randn(1, PREFIX, 32, generator=torch.Generator().manual_seed(3)))
    assert save_prefix_tuning(model, tmp_path)
    assert_same_logits(model, peft_model(tiny_llama, tmp_path), ids)


def test_peft_loads_a_classifier_prefix_layer_with_its_trained_head(ids, tmp_path):
    model, export = trained(tiny_llama_classifier)
    export.write(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    assert_same_logits(model, peft_model(tiny_llama_classifier, tmp_path), ids)


def test_peft_loads_a_classifier_prompt_with_its_trained_head(ids, tmp_path):
    model, export = trained(tiny_bert, "prompt-tuning")
    export.write(model, tmp_path)
    assert_same_logits(model, peft_model(tiny_bert, tmp_path), ids)


def test_an_encoder_prefix_layer_saves_only_lorakits_files_and_still_loads(ids, tmp_path):
    # BERT returns no key/value cache, and its pooler reads a prefix position, which PEFT's prefix has none of.
    model, export = trained(tiny_bert)
    export.write(model, tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    fresh = tiny_bert()
    load_method(fresh, tmp_path)
    assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)


def test_writing_the_peft_files_leaves_the_model_as_it_was(tmp_path):
    model, export = trained(tiny_gpt2)
    model.train()
    model.lm_head.eval()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    export.write(model, tmp_path)
    assert model.training and model.transformer.h[0].training and not model.lm_head.training
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    assert getattr(model, ATTRIBUTE).activations.requires_grad
