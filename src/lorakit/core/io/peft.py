"""PEFT's key names and config fields, both ways (with io/files.py, the only code that knows PEFT's format).

LoRA adapters (peft_type LORA), DoRA among them (use_dora: one more `<module>.lora_magnitude_vector` (out,) per
module), and the prompt-learning adapters of the prefix methods: PROMPT_TUNING (embeddings prepended to the input)
and PREFIX_TUNING (a key/value prefix at every layer), both a single `prompt_embeddings` tensor.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from lorakit.core.errors import AdapterFileError
from lorakit.core.layers import LoraEmbedding, SavedModule
from lorakit.core.state import is_wrapper
from lorakit.core.targets import kind_of, matches

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
PROMPT_KEY = "prompt_embeddings"
# PEFT's prompt-learning models hold the transformers model directly as `base_model` (no LoraModel in between).
PROMPT_HEAD_PREFIX = "base_model."
LORA_KEY = re.compile(r"(.+)\.(lora_A|lora_B)\.weight|(.+)\.(lora_embedding_A|lora_embedding_B)")
MAGNITUDE_SUFFIX = ".lora_magnitude_vector"  # DoRA's m (out,) of a module; PEFT's own key adds ".default.weight"
# Keys of a LoRA adapter_config.json whose meaning lorakit knows: read when loading, or without effect on what a
# saved adapter computes (training-time settings, initialisation recipes, bookkeeping). The weights file, not
# target_modules or layers_to_transform, says which modules carry factors.
KNOWN_KEYS = {
    "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "r",
    "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "fan_in_fan_out", "bias", "use_rslora",
    "modules_to_save", "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern",
    "alpha_pattern", "megatron_config", "megatron_core", "loftq_config", "eva_config", "corda_config",
    "astra_config", "lora_ga_config", "use_dora", "runtime_config", "ensure_weight_tying", "qalora_group_size",
    "peft_version", "enable_lora",
}
# Features that change the math; loading such a file as plain LoRA would give wrong outputs. Each is refused
# unless it holds PEFT's "off" value. (DoRA loads through lorakit.methods.load_dora.)
UNSUPPORTED = {
    "use_qalora": "QALoRA", "use_bdlora": "BD-LoRA", "lora_bias": "LoRA bias terms",
    "layer_replication": "layer replication", "target_parameters": "parameter targeting",
    "trainable_token_indices": "trainable tokens", "alora_invocation_tokens": "aLoRA", "arrow_config": "Arrow",
    "kasa_config": "KaSA", "monteclora_config": "MonteCLoRA", "velora_config": "VeLoRA",
}
OFF = (None, False, "", [], {})
"""Values that leave a PEFT feature off: a key lorakit does not know is ignored when it holds one of them."""
# init_lora_weights values that subtract the initial factors from the base weights: unless PEFT converted the
# adapter when saving it (which writes init_lora_weights true), it fits only the residual base saved with it.
RESIDUAL_INITS = ("pissa", "olora", "corda", "astra", "loftq")

log = logging.getLogger(__name__)


def check_config(config: dict, path: Path, dora: bool = False) -> None:
    """Refuse configs that are not plain LoRA (or, with `dora`, not DoRA), that switch on a feature lorakit cannot
    compute, or that carry wrong types; list every problem.

    A key lorakit does not know (written by a newer PEFT) is ignored while it is off (null, false, empty) and
    refused, with its name and value, otherwise: it may change what the adapter computes.
    """
    problems: list[str] = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; lorakit loads LoRA adapters (peft_type 'LORA')")
    for key in sorted(set(config) - KNOWN_KEYS - set(UNSUPPORTED)):
        if config[key] in OFF:
            log.debug("%s: ignoring %s=%r, a key lorakit does not know, since it is off", path, key, config[key])
        else:
            problems.append(f"unknown key {key}={config[key]!r} (written by a newer PEFT?): it may change the "
                            "adapter's outputs, so lorakit refuses it; upgrade lorakit, or set it to null if it "
                            "does not apply")
    if dora and config.get("use_dora") is not True:
        problems.append(f"use_dora is {config.get('use_dora')!r}, so this is not a DoRA adapter; load it with "
                        "lorakit.load_adapter")
    elif not dora and config.get("use_dora") not in (None, False):
        problems.append(f"use_dora={config['use_dora']!r}: DoRA is not supported by load_adapter or serving "
                        "(plain LoRA only); load it with lorakit.methods.load_dora, which runs it unmerged")
    for key, what in UNSUPPORTED.items():
        if config.get(key) not in OFF:
            problems.append(f"{key}={config[key]!r}: {what} is not supported by lorakit")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        problems.append(f"r must be a positive integer, got {r!r}")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        problems.append(f"lora_alpha must be a positive number, got {alpha!r}")
    if config.get("bias", "none") not in ("none", "all", "lora_only"):
        problems.append(f"bias must be none, all or lora_only, got {config.get('bias')!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            problems.append(f"{key} must be a JSON object")
    if problems:
        raise AdapterFileError(f"{path} cannot be loaded:\n  - " + "\n  - ".join(problems))
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(RESIDUAL_INITS):
        log.warning("%s: init_lora_weights is %r, which changes the base weights when training starts; the adapter "
                    "gives its trained outputs only on the residual base model saved with it (or save it with "
                    "PEFT's path_initial_model_for_weight_conversion to get a plain LoRA)", path, init)


def pattern_value(pattern: dict, path: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup: the first key k with re.match(rf"(.*\\.)?({k})$", path)."""
    for k, v in pattern.items():
        if re.match(rf"(.*\.)?({k})$", path):
            return v
    return default


def task_type(model: nn.Module) -> str | None:
    """PEFT's task_type for a transformers model class, or None for a plain model."""
    cls = type(model).__name__
    for suffix, task in (("ForCausalLM", "CAUSAL_LM"), ("ForSequenceClassification", "SEQ_CLS"),
                         ("ForTokenClassification", "TOKEN_CLS"), ("ForQuestionAnswering", "QUESTION_ANS"),
                         ("ForConditionalGeneration", "SEQ_2_SEQ_LM")):
        if cls.endswith(suffix):
            return task
    return None


def export_factors(m: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) as PEFT stores them for one wrapped module.

    Fused slices become one block-structured LoRA of rank k·r whose ΔW equals ours exactly (B is zero outside
    each slice's block). A PiSSA adapter is saved as the rank-2r LoRA [A; A0], [B, -B0] whose ΔW is what
    training added on top of the original weights, so it loads on the unmodified base model (as PEFT does).
    """
    a, b = m.lora_A[name].detach(), m.lora_B[name].detach()
    slices = getattr(m, "slices", None)
    if slices:
        k, p = len(m.enabled), m.part_size
        r = a.shape[0] // k
        block = torch.zeros(m.out_features, k * r, dtype=b.dtype, device=b.device)
        for j, e in enumerate(m.enabled):
            block[e * p : (e + 1) * p, j * r : (j + 1) * r] = b[j * p : (j + 1) * p]
        b = block
    if name in getattr(m, "pissa", {}):
        a0, b0 = m.pissa[name]
        a, b = torch.cat([a, a0.to(a.dtype)], 0), torch.cat([b, -b0.to(b.dtype)], 1)
    return a, b


def lora_keys(path: str, m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    if isinstance(m, LoraEmbedding):
        return {f"{path}.lora_embedding_A": a, f"{path}.lora_embedding_B": b}
    return {f"{path}.lora_A.weight": a, f"{path}.lora_B.weight": b}


def is_trained_bias(pname: str, mode: str, adapted: dict) -> bool:
    if mode == "none" or not pname.endswith("bias") or ".lora_" in pname or ".copies." in pname:
        return False
    if mode == "all":
        return True
    return pname.endswith(".base_layer.bias") and pname[: -len(".base_layer.bias")] in adapted


@dataclass
class LoadPlan:
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    saved: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    slices: dict[str, list[bool]] = field(default_factory=dict)
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)


def plain_name(name: str) -> str:
    """A parameter/module name as in the unwrapped model."""
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def plan_load(model: nn.Module, config: dict, meta: dict, tensors: dict, fp: dict, where: Path) -> LoadPlan:
    """Check every tensor of a PEFT adapter against `model` and return what to install; raise listing all problems."""
    base = meta.get("base") or {}
    diff = {k: (base[k], fp[k]) for k in base.keys() & fp.keys() if base[k] != fp[k]}
    if diff:
        said = ", ".join(f"{k}: adapter {a!r} vs model {b!r}" for k, (a, b) in sorted(diff.items()))
        raise AdapterFileError(f"{where} was saved for a different base model ({said}); load it on that model")
    keys = [key[len(PREFIX) :] if key.startswith(PREFIX) else key for key in tensors]
    # Walking every module and parameter dominates loading a further adapter on a large model; a plain LoRA
    # file (only lora_* keys) needs neither, so build those maps only when other keys are present.
    plain = all(LORA_KEY.fullmatch(k) for k in keys)
    modules = {} if plain else dict(model.named_modules())
    params = {} if plain else {plain_name(n): p for n, p in model.named_parameters()}
    plan, problems = LoadPlan(), []
    lora: dict[str, dict[str, torch.Tensor]] = {}
    magnitudes: dict[str, torch.Tensor] = {}
    saved_names = config.get("modules_to_save") or []
    for k, t in zip(keys, tensors.values(), strict=True):
        hit = LORA_KEY.fullmatch(k)
        if hit:
            path, part = (hit.group(1), hit.group(2)) if hit.group(1) else (hit.group(3), hit.group(4))
            lora.setdefault(path, {})[part[-1]] = t
        elif config.get("use_dora") and k.endswith(MAGNITUDE_SUFFIX):
            magnitudes[k[: -len(MAGNITUDE_SUFFIX)]] = t
        elif saved_names and _owner(k.replace(".modules_to_save", ""), saved_names, modules):
            _plan_saved(k.replace(".modules_to_save", ""), t, saved_names, modules, plan, problems)
        elif re.search(r"\.lora_(magnitude_vector|E|[a-z_]+)\b", k):
            problems.append(f"{k}: not a plain LoRA tensor (DoRA/AdaLoRA/...); lorakit loads plain LoRA only")
        elif k.endswith(".base_layer.weight"):
            own = params.get(plain_name(k))
            if own is None or own.shape != t.shape or not torch.equal(own.detach().cpu().to(t.dtype), t):
                problems.append(f"{k}: the adapter carries a modified base weight (resized embeddings?); "
                                f"lorakit adapters never change base weights")
        elif k.endswith("bias") and plain_name(k) in params and config.get("bias", "none") != "none":
            own = params[plain_name(k)]
            if own.shape != t.shape:
                problems.append(f"{k}: shape {tuple(t.shape)} but the model's bias is {tuple(own.shape)}")
            plan.biases[plain_name(k)] = t
        else:
            _plan_saved(k.replace(".modules_to_save", ""), t, saved_names, modules, plan, problems)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    slices = meta.get("slices") or {}
    for path, ab in sorted(lora.items()):
        if set(ab) != {"A", "B"}:
            problems.append(f"{path}: has lora_{''.join(ab)} but not its partner; the file is incomplete")
            continue
        r_file = pattern_value(rank_pattern, path, config.get("r"))
        if ab["A"].shape[0] != r_file:
            problems.append(f"{path}: weights have rank {ab['A'].shape[0]} but the config says r={r_file}")
        module = _submodule(model, path)
        if module is None:
            problems.append(f"{path}: no such module in this model (an adapter for a different base model?)")
            continue
        base = module.base_layer if is_wrapper(module) else module
        problem = _shape_problem(path, base, ab["A"], ab["B"])
        if problem:
            problems.append(problem)
            continue
        if config.get("use_dora"):
            magnitude = magnitudes.pop(path, None)
            problem = _magnitude_problem(path, base, magnitude)
            if problem:
                problems.append(problem)
                continue
            plan.magnitudes[path] = magnitude
        rank = ab["A"].shape[0]
        alpha = pattern_value(alpha_pattern, path, config.get("lora_alpha"))
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        b = ab["B"]
        if path in slices:
            b, problem = _unblock(path, slices[path], b, rank)
            if problem:
                problems.append(problem)
                continue
            plan.slices[path] = slices[path]
        plan.modules[path] = (ab["A"], b, scale)
    problems += [f"{path}{MAGNITUDE_SUFFIX}: a DoRA magnitude without lora_A/lora_B; the file is incomplete"
                 for path in sorted(magnitudes)]
    for path, sd in plan.saved.items():
        module = modules[path]
        want = (module.original_module if isinstance(module, SavedModule) else module).state_dict()
        if set(want) - set(sd):
            problems.append(f"{path}: modules_to_save weights lack {sorted(set(want) - set(sd))}; file incomplete")
    if not plan.modules and not problems:
        problems.append("the file holds no LoRA weights (lora_A/lora_B); is it a LoRA adapter?")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise AdapterFileError(f"{where} does not fit this model:\n  - " + "\n  - ".join(shown))
    return plan


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _shape_problem(path: str, base: nn.Module, a: torch.Tensor, b: torch.Tensor) -> str | None:
    kind = kind_of(base)
    w = base.weight.shape if kind else None
    if kind == "Linear":
        want_a, want_b = (a.shape[0], w[1]), (w[0], a.shape[0])
    elif kind == "Conv1D":
        want_a, want_b = (a.shape[0], w[0]), (w[1], a.shape[0])
    elif kind == "Embedding":
        want_a, want_b = (a.shape[0], w[0]), (w[1], a.shape[0])
    elif kind == "Conv2d":
        want_a, want_b = (a.shape[0], *w[1:]), (w[0], a.shape[0], 1, 1)
    else:
        return f"{path}: is a {type(base).__name__}, which LoRA cannot adapt"
    if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
        return (f"{path}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the {kind} weight "
                f"{tuple(w)} (expected {want_a} / {want_b}); the adapter was made for another model shape")
    return None


def _magnitude_problem(path: str, base: nn.Module, magnitude: torch.Tensor | None) -> str | None:
    kind = kind_of(base)
    if kind not in ("Linear", "Conv1D"):
        what = kind or type(base).__name__
        return f"{path}: DoRA on {what} layers is not supported by lorakit (Linear and Conv1D only)"
    if magnitude is None:
        return f"{path}: has no lora_magnitude_vector although use_dora is true; the DoRA file is incomplete"
    out = base.weight.shape[1 if kind == "Conv1D" else 0]
    if tuple(magnitude.shape) != (out,):
        return f"{path}: lora_magnitude_vector {tuple(magnitude.shape)} does not fit {out} outputs (expected ({out},))"
    return None


def _unblock(path: str, mask: list[bool], b: torch.Tensor, rank: int) -> tuple[torch.Tensor, str | None]:
    """Block-structured PEFT B (out x k·r) back to lorakit's per-slice B (k·part x r)."""
    enabled = [i for i, on in enumerate(mask) if on]
    k, n = len(enabled), len(mask)
    if rank % k or b.shape[0] % n:
        return b, f"{path}: slices {mask} do not divide rank {rank} / {b.shape[0]} outputs"
    r, p = rank // k, b.shape[0] // n
    blocks = [b[e * p : (e + 1) * p, j * r : (j + 1) * r] for j, e in enumerate(enabled)]
    rest = b.clone()
    for j, e in enumerate(enabled):
        rest[e * p : (e + 1) * p, j * r : (j + 1) * r] = 0
    if rest.abs().max() > 0:
        return b, f"{path}: lorakit.json says slices {mask} but lora_B is not block-structured"
    return torch.cat(blocks, 0), None


def _owner(k: str, names: list, modules: dict) -> str | None:
    """The modules_to_save module path that parameter key `k` belongs to, or None."""
    owners = [p for p in modules if p and k.startswith(p + ".") and matches(p, tuple(names))]
    return max(owners, key=len) if owners else None


def _plan_saved(k: str, t: torch.Tensor, names: list, modules: dict, plan: LoadPlan, problems: list) -> None:
    path = _owner(k, names, modules) if names else None
    if path is None:
        problems.append(f"{k}: unexpected key (not LoRA, not a trained bias, not in modules_to_save {names})")
        return
    module = modules[path]
    own = (module.original_module if isinstance(module, SavedModule) else module).state_dict()
    pname = k[len(path) + 1 :]
    if pname not in own or own[pname].shape != t.shape:
        problems.append(f"{k}: does not fit module {path} ({type(module).__name__}); wrong base model?")
        return
    plan.saved.setdefault(path, {})[pname] = t


def prompt_tuning_files(model: nn.Module, prompt: torch.Tensor, head: dict[str, torch.Tensor]) -> dict[str, bytes]:
    """The files of a PEFT PROMPT_TUNING adapter: `prompt` (num_virtual_tokens, d) is prepended to the input
    embeddings; `head` (parameter name -> tensor, e.g. "score.weight") is a trained classifier, or {} for an LM."""
    config = {
        **_prompt_learning_config(model, "PROMPT_TUNING", prompt.shape[0], prompt.shape[1],
                                  getattr(getattr(model, "config", None), "num_attention_heads", None), head),
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
    }
    return _prompt_learning_files(config, prompt, head)


def prefix_tuning_files(model: nn.Module, keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]],
                        head: dict[str, torch.Tensor]) -> dict[str, bytes]:
    """The files of a PEFT PREFIX_TUNING adapter whose layer i prepends keys_values[i] = (K_i, V_i), each
    (kv_heads, n, head_dim), to the keys and values its attention computes for the input.

    PEFT's get_prompt views prompt_embeddings (n, L·2·kv_heads·head_dim) as (n, 2L, kv_heads, head_dim) and
    permutes it to (2L, kv_heads, n, head_dim): entry 2i is layer i's key, 2i+1 its value. token_dim is
    kv_heads·head_dim and num_attention_heads is kv_heads, as PEFT sets them itself for grouped-query attention.
    """
    tensors = [t for kv in keys_values for t in kv]
    if len({t.shape for t in tensors}) != 1 or tensors[0].dim() != 3:
        raise AdapterFileError(f"PEFT's PREFIX_TUNING needs one (kv_heads, n, head_dim) key/value shape for every "
                               f"layer; got {sorted({tuple(t.shape) for t in tensors})}")
    stacked = torch.stack(tensors)  # (2L, kv_heads, n, head_dim)
    two_layers, heads, n, head_dim = stacked.shape
    weight = stacked.permute(2, 0, 1, 3).reshape(n, two_layers * heads * head_dim)  # (n, 2L·kv_heads·head_dim)
    config = {
        **_prompt_learning_config(model, "PREFIX_TUNING", n, heads * head_dim, heads, head),
        "num_layers": two_layers // 2,
        "encoder_hidden_size": heads * head_dim,
        "prefix_projection": False,
        "init_weights": None,
    }
    return _prompt_learning_files(config, weight, head)


def read_prompt_tuning(directory: str | os.PathLike) -> torch.Tensor:
    """The (num_virtual_tokens, d) prompt of a PEFT PROMPT_TUNING directory (ours or PEFT's)."""
    d = Path(directory)
    try:
        config = json.loads((d / CONFIG_FILE).read_text())
        tensors = st_load((d / WEIGHTS_FILE).read_bytes())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterFileError(f"{d} is not a PEFT prompt-tuning directory ({e})") from e
    if config.get("peft_type") != "PROMPT_TUNING" or PROMPT_KEY not in tensors:
        raise AdapterFileError(f"{d} holds a {config.get('peft_type')} adapter, not PROMPT_TUNING with "
                               f"{PROMPT_KEY}")
    return tensors[PROMPT_KEY]


def _prompt_learning_config(model: nn.Module, peft_type: str, virtual_tokens: int, token_dim: int,
                            heads: int | None, head: dict[str, torch.Tensor]) -> dict:
    config = getattr(model, "config", None)
    modules = sorted({name.rsplit(".", 1)[0] for name in head})
    return {
        "peft_type": peft_type,
        "task_type": "SEQ_CLS" if any(n in ("classifier", "score") for n, _ in model.named_children()) else "CAUSAL_LM",
        "base_model_name_or_path": getattr(config, "_name_or_path", None) or None,
        "revision": None,
        "inference_mode": True,
        "num_virtual_tokens": virtual_tokens,
        "token_dim": token_dim,
        "num_transformer_submodules": 1,
        "num_attention_heads": heads,
        "num_layers": getattr(config, "num_hidden_layers", None),
        "modules_to_save": modules or None,
    }


def _prompt_learning_files(config: dict, weight: torch.Tensor, head: dict[str, torch.Tensor]) -> dict[str, bytes]:
    tensors = {PROMPT_KEY: weight, **{PROMPT_HEAD_PREFIX + k: t for k, t in head.items()}}
    tensors = {k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()}
    return {WEIGHTS_FILE: st_save(tensors, metadata={"format": "pt"}),
            CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode()}
