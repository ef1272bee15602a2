"""`load`: a built-in model name or a local transformers directory -> (model, tokenizer), offline."""

from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lorakit.models.errors import ModelError
from lorakit.models.gguf import cached_gguf
from lorakit.models.registry import BUILTINS, KINDS, Builtin, Kind, builtin
from lorakit.models.tokens import default_pad, set_special_tokens

_AUTO = {
    "causal-lm": AutoModelForCausalLM,
    "seq-cls": AutoModelForSequenceClassification,
    "encoder": AutoModel,
}


def load(
    name_or_path: str | Path,
    kind: Kind | None = None,
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer from a built-in name (see `BUILTINS`) or a local directory.

    kind picks the head: `causal-lm` (next-token logits), `seq-cls` (a classifier over the pooled
    sequence; `num_labels` classes, freshly initialized unless the directory has one), or `encoder`
    (hidden states only). None means the built-in's default kind, or `causal-lm` for a directory.
    A string that is a built-in name means the built-in; write `./name` for a directory of that name.
    The first load of `smollm2-135m` dequantizes its GGUF into the cache (about 20 s); later ones
    read the cache (about a second).
    """
    entry = builtin(name_or_path) if isinstance(name_or_path, str) else None
    kind = kind or (entry.default_kind if entry else "causal-lm")
    _check_request(name_or_path, entry, kind, num_labels)
    directory = _directory(entry) if entry else _local_directory(Path(name_or_path))
    options = {} if num_labels is None else {"num_labels": num_labels}
    model = _AUTO[kind].from_pretrained(directory, dtype=dtype, local_files_only=True, **options)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    pad = default_pad(tokenizer)
    if pad is not None:
        set_special_tokens(model, tokenizer, pad=pad, eos=None)
    return model, tokenizer


def _check_request(name_or_path: str | Path, entry: Builtin | None, kind: str, num_labels: int | None) -> None:
    problems = []
    if kind not in KINDS:
        problems.append(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    elif entry is not None and kind not in entry.kinds:
        problems.append(f"{entry.name} loads as {' or '.join(entry.kinds)}, not {kind!r}")
    if num_labels is not None and kind != "seq-cls":
        problems.append(f"num_labels applies only to kind='seq-cls', not {kind!r}; drop it")
    elif num_labels is not None and num_labels < 1:
        problems.append(f"num_labels must be at least 1, got {num_labels}")
    elif entry is not None and kind == "seq-cls" and num_labels is None:
        problems.append(f"{entry.name} has no classifier, so kind='seq-cls' needs num_labels (class count)")
    if problems:
        raise ModelError(f"cannot load {str(name_or_path)!r}: " + "; ".join(problems))


def _directory(entry: Builtin) -> Path:
    return cached_gguf(entry) if entry.is_gguf else entry.source()


def _local_directory(path: Path) -> Path:
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        raise ModelError(
            f"{str(path)!r} is a directory but has no config.json; point load at a transformers model "
            "directory (what save_pretrained writes)"
        )
    names = ", ".join(entry.name for entry in BUILTINS)
    raise ModelError(
        f"unknown model {str(path)!r}: it is neither a built-in name ({names}) nor an existing "
        "directory. Use a built-in name, or the path of a local transformers model directory "
        "(with config.json); lorakit never downloads models."
    )
