"""Where things are inside a transformers model: its blocks, each block's attention and MLP output projections,
its norms, and a classifier head. Found by well-known module names so the methods work on Llama, GPT-2 and BERT
(and the many models that copy their naming) without a table per architecture."""

from __future__ import annotations

from torch import nn

from lorakit.core.errors import ConfigError

# Paths inside one block, tried in order. BERT's MLP output is `output.dense`, so its attention output
# (`attention.output.dense`) must be tried first for the attention role.
ATTENTION_OUTPUTS = ("self_attn.o_proj", "attn.c_proj", "attention.output.dense", "self_attn.out_proj",
                     "attention.dense", "attn.out_proj", "self_attention.dense")
MLP_OUTPUTS = ("mlp.down_proj", "mlp.c_proj", "output.dense", "fc2", "mlp.dense_4h_to_h", "mlp.fc_out", "mlp.fc2")
HEADS = ("classifier", "score")


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks in order: the longest ModuleList of identical module types."""
    best: list[nn.Module] = []
    for _, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > len(best) and len({type(b) for b in m}) == 1:
            best = list(m)
    if not best:
        raise ConfigError(f"cannot find the transformer blocks of {type(model).__name__} (no nn.ModuleList of "
                          "blocks); this method supports Llama-, GPT-2- and BERT-style models")
    return best


def _find(block: nn.Module, paths: tuple[str, ...], role: str) -> nn.Module:
    for path in paths:
        try:
            return block.get_submodule(path)
        except AttributeError:
            continue
    raise ConfigError(f"cannot find the {role} output projection in {type(block).__name__} (looked for "
                      f"{', '.join(paths)}); this method supports Llama-, GPT-2- and BERT-style blocks")


def attention_output(block: nn.Module) -> nn.Module:
    """The projection whose output is added to the residual after attention (o_proj, c_proj, ...)."""
    return _find(block, ATTENTION_OUTPUTS, "attention")


def mlp_output(block: nn.Module) -> nn.Module:
    """The projection whose output is added to the residual after the MLP (down_proj, c_proj, ...)."""
    return _find(block, MLP_OUTPUTS, "MLP")


def norms(module: nn.Module) -> list[nn.Module]:
    """LayerNorm/RMSNorm modules inside `module` (by class name, since RMSNorm classes are per-architecture)."""
    return [m for m in module.modules() if "Norm" in type(m).__name__ and any(True for _ in m.parameters())]


def hidden_size(model: nn.Module) -> int:
    """d, the width of the residual stream (the input embedding's width)."""
    return model.get_input_embeddings().weight.shape[1]


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Names of a sequence-classification head (a fresh layer every method must train), or () for an LM."""
    return tuple(n for n, _ in model.named_children() if n in HEADS)


def train_head(model: nn.Module) -> None:
    """Let the classification head train: it starts random, so no method can do without it (the paper trains
    the RoBERTa/DeBERTa classifier for every method)."""
    for name in head_names(model):
        model.get_submodule(name).requires_grad_(True)
