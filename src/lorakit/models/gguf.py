"""Turning a built-in GGUF file into a cached float32 transformers directory, once."""

import importlib.metadata
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from lorakit.models.cache import cache_root, write_atomically
from lorakit.models.registry import Builtin
from lorakit.models.tokens import set_special_tokens

CACHE_FORMAT = 1
"""Bump when the conversion below changes, so existing caches are rebuilt rather than trusted."""

STAMP = "lorakit-cache.json"
"""Written last into the cache directory; it records what the cache was built from."""


def cached_gguf(entry: Builtin) -> Path:
    """The cache directory for `entry`, dequantizing its GGUF into it first if it is missing or stale."""
    final = cache_root() / "models" / entry.name
    stamp = _stamp(entry)
    try:
        if json.loads((final / STAMP).read_text()) == stamp:
            return final
    except (OSError, json.JSONDecodeError):
        pass  # no cache yet, or an unreadable stamp: rebuild
    return write_atomically(final, lambda tmp: _dequantize(entry, tmp, stamp))


def _stamp(entry: Builtin) -> dict[str, object]:
    source = entry.source()
    return {
        "format": CACHE_FORMAT,
        "package": entry.package,
        "version": _version(entry.package),
        "file": entry.file,
        "bytes": source.stat().st_size,
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None  # files copied in without pip's metadata; the file size still tells versions apart


def _dequantize(entry: Builtin, out: Path, stamp: dict[str, object]) -> None:
    source = entry.source()
    # dequantize=True makes transformers unpack every weight into a plain nn.Linear and then drop its
    # GGUF quantizer (model.hf_quantizer, config.quantization_config, is_quantized); with the quantizer
    # attached, save_pretrained refuses ("quantized with gguf and is not serializable"), and LoRA could
    # not wrap packed GgufLinear layers on transformers versions that keep the weights packed.
    model = AutoModelForCausalLM.from_pretrained(
        source.parent,
        gguf_file=source.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
        local_files_only=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
    set_special_tokens(model, tokenizer, pad=entry.pad_token, eos=entry.eos_token)
    # The GGUF carries no limit, so the tokenizer reports ~1e30; the position table is the real one.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
