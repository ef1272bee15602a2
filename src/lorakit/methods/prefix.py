"""Prefix methods (Hu et al., 2021, section 5.1): trainable activations at l_p extra positions before the input.

- prefix-embed (PreEmbed): l_p trainable input embeddings, |Θ| = d·l_p; initialized from N(0, σ_embed²).
- prompt-tuning (Lester et al., 2021): the same parameters, initialized from embeddings of random vocabulary
  tokens; both save in PEFT's PROMPT_TUNING format (`prompt_embeddings`, (l_p, d)).
- prefix-layer (PreLayer): the activations at the prefix positions are trainable at the input of every block:
  activations (L, l_p, d), where row 0 is prepended to the input embeddings and row i replaces the prefix part of
  block i's input, so whatever block i-1 computed there is discarded. |Θ| = L·d·l_p. Initialized from the base
  model's own activations over random vocabulary tokens (Li & Liang, 2021, found real-word inits train best).

The paper's infix positions (l_i) are not implemented: only prefixes (l_i = 0).

A forward pre-hook on the model prepends the prefix to `inputs_embeds` and the attention mask and shifts
position ids; a forward hook cuts the l_p prefix positions off the logits, so logits keep the (B, T, V) shape of
the input and the training loop, losses and decoding need no change. During cached decoding (a non-empty KV
cache) the prefix is already in the cache, so only the mask and positions are extended.

prefix-layer also saves in PEFT's PREFIX_TUNING format: real tokens see the prefix at each block only through the
keys and values of the prefix positions, so those, computed once, reproduce the prefixed model in PEFT exactly.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.core.errors import ConfigError
from lorakit.core.io import peft as peft_format
from lorakit.methods.blocks import blocks, train_head
from lorakit.methods.export import Export, method_info
from lorakit.methods.options import MethodOptions

if TYPE_CHECKING:
    from pathlib import Path

ATTRIBUTE = "lorakit_prefix"
Init = Literal["normal", "vocab", "activations"]


class Prefix(nn.Module):
    """Trainable activations (depth, l_p, d): row 0 at the input, row i at the input of block i."""

    def __init__(self, activations: torch.Tensor):
        super().__init__()
        self.activations = nn.Parameter(activations.detach().clone())
        self.active = False  # whether the current forward call carries the prefix (False while decoding)
        self.input_length = 0  # T of the current call before the prefix was prepended

    @property
    def length(self) -> int:
        return self.activations.shape[1]

    def rows(self, i: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        return self.activations[i].to(like.dtype).expand(batch, -1, -1)  # (B, l_p, d)


def _cache_length(kwargs: dict[str, Any]) -> int:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0


def _before(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    prefix: Prefix = getattr(model, ATTRIBUTE)
    if args:  # input_ids given positionally
        kwargs = {**kwargs, "input_ids": args[0]}
        args = args[1:]
    n = prefix.length
    ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
    batch = (ids if ids is not None else embeds).shape[0]
    device = (ids if ids is not None else embeds).device
    kwargs = dict(kwargs)
    if kwargs.get("attention_mask") is not None:
        mask = kwargs["attention_mask"]
        kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)
    positions = kwargs.get("position_ids")
    prefix.active = _cache_length(kwargs) == 0
    if not prefix.active:
        if positions is not None:
            kwargs["position_ids"] = positions + n
        return args, kwargs
    if embeds is None:
        embeds = model.get_input_embeddings()(ids)
    prefix.input_length = embeds.shape[1]
    kwargs["input_ids"] = None
    kwargs["inputs_embeds"] = torch.cat([prefix.rows(0, batch, embeds), embeds], dim=1)  # (B, l_p + T, d)
    if positions is not None:
        start = torch.arange(n, device=device).expand(positions.shape[0], n)
        kwargs["position_ids"] = torch.cat([start, positions + n], dim=1)
    for key in ("token_type_ids",):
        if kwargs.get(key) is not None:
            kwargs[key] = torch.cat([kwargs[key].new_zeros(batch, n), kwargs[key]], dim=1)
    if kwargs.get("labels") is not None:
        kwargs["labels"] = torch.cat([kwargs["labels"].new_full((batch, n), -100), kwargs["labels"]], dim=1)
    return args, kwargs


def _after(model: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
    prefix: Prefix = getattr(model, ATTRIBUTE)
    logits = getattr(output, "logits", None)
    # generate() may ask for the last position's logits only (logits_to_keep), which has no prefix part.
    if prefix.active and logits is not None and logits.dim() == 3 and logits.shape[1] > prefix.input_length:
        output.logits = logits[:, -prefix.input_length:]
    return output


class _ReplaceAtBlock:
    """Pre-hook of block i: the prefix part of its input becomes the trainable row i."""

    def __init__(self, prefix: Prefix, index: int):
        self.prefix, self.index = prefix, index

    def __call__(self, block: nn.Module, args: tuple) -> tuple | None:
        if not self.prefix.active:
            return None
        h = args[0]  # (B, l_p + T, d)
        n = self.prefix.length
        return (torch.cat([self.prefix.rows(self.index, h.shape[0], h), h[:, n:]], dim=1), *args[1:])


def insert_prefix(model: nn.Module, activations: torch.Tensor) -> Prefix:
    """Attach trainable activations (depth, l_p, d) to `model` in place (depth 1: input only; depth L: every
    block's input); returns the Prefix module."""
    if hasattr(model, ATTRIBUTE):
        raise ConfigError("this model already has a prefix; load a fresh model to add another")
    layers = blocks(model)
    if not 1 <= activations.shape[0] <= len(layers):
        raise ConfigError(f"prefix depth {activations.shape[0]} must be between 1 and the {len(layers)} blocks")
    w = model.get_input_embeddings().weight
    prefix = Prefix(activations.to(device=w.device, dtype=w.dtype))
    model.add_module(ATTRIBUTE, prefix)
    model.register_forward_pre_hook(_before, with_kwargs=True)
    model.register_forward_hook(_after, with_kwargs=True)
    for i in range(1, activations.shape[0]):
        layers[i].register_forward_pre_hook(_ReplaceAtBlock(prefix, i))
    return prefix


def initial_activations(model: nn.Module, length: int, init: Init) -> torch.Tensor:
    """Starting values: (1, l_p, d) for normal/vocab, (L, l_p, d) base-model activations for 'activations'."""
    embedding = model.get_input_embeddings()
    w = embedding.weight
    if init == "normal":
        return (torch.randn(length, w.shape[1], device=w.device) * w.detach().float().std()).to(w.dtype)[None]
    ids = torch.randint(0, w.shape[0], (1, length), device=w.device)
    if init == "vocab":
        return embedding(ids).detach()
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    # hidden_states[0] is the embedding module's output (with positions, maybe normalized); row 0 is prepended
    # before that module, so it is the raw token embedding instead.
    depth = len(blocks(model))
    return torch.cat([embedding(ids).detach(), *[out.hidden_states[i].detach() for i in range(1, depth)]])


def _prefix_method(name: str, init: Init) -> Any:
    def method(model: nn.Module, lora: LoraConfig, options: MethodOptions) -> Export:
        activations = initial_activations(model, options.prefix_length, init)
        model.requires_grad_(False)
        insert_prefix(model, activations).requires_grad_(True)
        train_head(model)
        return prefix_export(method_info(name, lora, options), prompt=init != "activations")

    method.__name__ = name.replace("-", "_")
    method.__doc__ = f"{name}: see lorakit.methods.prefix."
    return method


def prefix_export(info: dict[str, Any], prompt: bool) -> Export:
    """Input prompts go to PEFT's PROMPT_TUNING files (other trained tensors, e.g. a head, to trained.safetensors).
    PreLayer activations go to trained.safetensors, which lorakit loads, and their keys/values to PEFT's
    PREFIX_TUNING files for PEFT users (see save_prefix_tuning)."""
    from lorakit.methods.files import save_prompt, save_trained

    def write(model: nn.Module, directory: Path) -> None:
        if prompt:
            save_prompt(model, directory, getattr(model, ATTRIBUTE).activations[0])
            save_trained(model, directory, info, skip=(ATTRIBUTE,))
        else:
            save_prefix_tuning(model, directory)
            save_trained(model, directory, info)

    return Export("adapter", write)


def prefix_keys_values(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """What the input's tokens see of the prefix: per layer, the key and value (kv_heads, l_p, head_dim) at the
    prefix positions; None for a model that returns no key/value cache of every position (an encoder like BERT).

    One eval-mode forward over a single dummy token with use_cache=True: its cache starts with the l_p prefix
    positions, which do not depend on the token because attention is causal. At a block with its own row they
    come from that row alone; at blocks past the prefix's depth, from the rows below. Either way they are exactly
    what any later token attends to there, so PEFT's prefix tuning reproduces the logits for every depth.
    """
    prefix: Prefix = getattr(model, ATTRIBUTE)
    config = getattr(model, "config", None)
    token = next((t for t in (getattr(config, "bos_token_id", None), getattr(config, "pad_token_id", None))
                  if isinstance(t, int)), 0)
    ids = torch.tensor([[token]], device=model.get_input_embeddings().weight.device)
    modes = {m: m.training for m in model.modules()}
    model.eval()  # dropout would make the keys and values random
    try:
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
    finally:
        for m, mode in modes.items():
            m.training = mode
    cache = out.get("cache")
    if cache is None:  # transformers before the output field was renamed
        cache = out.get("past_key_values")
    layers = getattr(cache, "layers", None)
    n = prefix.length
    # A sliding-window layer shorter than l_p + 1 keeps only the last positions; PEFT could not place them.
    if not layers or any(layer.keys is None or layer.keys.shape[-2] != n + 1 for layer in layers):
        return None
    return [(layer.keys[0, :, :n], layer.values[0, :, :n]) for layer in layers]  # each (kv_heads, l_p, head_dim)


def save_prefix_tuning(model: nn.Module, directory: str | os.PathLike) -> bool:
    """Write the prefix as a PEFT PREFIX_TUNING adapter (adapter_config.json, adapter_model.safetensors; a
    classification head as modules_to_save), so `peft.PeftModel.from_pretrained(base, directory)` gives the same
    logits; returns False, writing nothing, when prefix_keys_values is None.

    One way only: the file holds keys and values, which cannot be turned back into the activations (a key/value
    of kv_heads·head_dim per layer is a projection of a d-wide row); lorakit loads trained.safetensors instead.
    """
    from lorakit.methods.files import head_state, write_files

    keys_values = prefix_keys_values(model)
    if keys_values is None:
        return False
    write_files(directory, peft_format.prefix_tuning_files(model, keys_values, head_state(model)))
    return True


prefix_embed = _prefix_method("prefix-embed", "normal")
prompt_tuning = _prefix_method("prompt-tuning", "vocab")
prefix_layer = _prefix_method("prefix-layer", "activations")
