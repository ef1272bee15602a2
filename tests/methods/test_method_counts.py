"""Trainable-parameter counts equal the LoRA paper's formulas (Hu et al., 2021, section 5.1) on GPT-2 shapes."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_gpt2, tiny_llama
from transformers import GPT2Config, GPT2LMHeadModel

from lorakit.core.config import LoraConfig
from lorakit.core.errors import ConfigError
from lorakit.methods import (
    METHODS,
    MethodOptions,
    adapter_count,
    check_names,
    lora_count,
    prefix_embed_count,
    prefix_layer_count,
    trainable_count,
)


def gpt2_medium_on_meta() -> GPT2LMHeadModel:
    """GPT-2 Medium's exact shapes (L=24, d=1024) without allocating its 355M weights."""
    with torch.device("meta"):
        return GPT2LMHeadModel(GPT2Config(n_embd=1024, n_layer=24, n_head=16))


def prepared(model: torch.nn.Module, name: str, options: MethodOptions, lora: LoraConfig | None = None):
    METHODS[name].prepare(model, lora or LoraConfig(targets=("c_attn",)), options)
    return model


def test_adapter_l_on_gpt2_medium_with_r6_has_the_papers_0_369m_parameters():
    count = trainable_count(prepared(gpt2_medium_on_meta(), "adapter-l", MethodOptions(bottleneck=6)))
    assert count == adapter_count(1024, 6, adapter_layers=24, layer_norms=24) == 368_784
    assert round(count / 1e6, 3) == 0.369


def test_adapter_h_count_has_two_adapters_and_two_norms_per_block():
    count = trainable_count(prepared(gpt2_medium_on_meta(), "adapter-h", MethodOptions(bottleneck=8)))
    assert count == adapter_count(1024, 8, adapter_layers=48, layer_norms=48)


def test_lora_on_query_and_value_of_gpt2_medium_counts_2_lhat_d_r():
    lora = LoraConfig(rank=4, targets=("c_attn",), slices={"c_attn": (True, False, True)})
    count = trainable_count(prepared(gpt2_medium_on_meta(), "lora", MethodOptions(), lora))
    assert count == lora_count(1024, 4, matrices=48)


def test_prefix_embed_and_prompt_tuning_count_d_times_prefix_length():
    for name in ("prefix-embed", "prompt-tuning"):
        assert trainable_count(prepared(tiny_gpt2(), name, MethodOptions(prefix_length=5))) == prefix_embed_count(32, 5)


def test_prefix_layer_counts_l_times_d_times_prefix_length():
    count = trainable_count(prepared(tiny_gpt2(), "prefix-layer", MethodOptions(prefix_length=5)))
    assert count == prefix_layer_count(2, 32, 5)


def test_paper_formulas_give_the_papers_gpt2_medium_numbers():
    assert prefix_embed_count(1024, 256, 8) == 1024 * 264
    assert prefix_layer_count(24, 1024, 5, 0) == 122_880
    assert lora_count(1024, 4, 48) == 393_216


def test_bitfit_on_a_bias_free_model_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="has none .*Llama-style"):
        METHODS["bitfit"].prepare(tiny_llama(), LoraConfig(), MethodOptions())


def test_bitfit_trains_exactly_the_biases():
    model = prepared(tiny_gpt2(), "bitfit", MethodOptions())
    assert trainable_count(model) == sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))


def test_ft_top2_trains_only_the_last_two_blocks():
    model = prepared(tiny_gpt2(), "ft-top2", MethodOptions())
    assert {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad} == {"0", "1"}


def test_unknown_method_names_are_listed_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown methods 'lorra', 'adapterx'; known methods are full, ft-top2"):
        check_names(["lora", "lorra", "adapterx"])


@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if m.family != "full"])
def test_every_method_trains_a_fresh_classification_head(name):
    from tiny import tiny_bert

    model = tiny_bert()
    METHODS[name].prepare(model, LoraConfig(targets=("query", "value")), MethodOptions(prefix_length=2))
    head = [n for n, p in model.named_parameters() if "classifier" in n and p.requires_grad]
    assert head, f"{name} leaves the random classifier frozen"


def test_method_options_must_be_positive():
    with pytest.raises(ConfigError, match="bottleneck: .*greater than or equal to 1.*\n.*prefix_length"):
        MethodOptions(bottleneck=0, prefix_length=-1)
