"""Making a tokenizer's special tokens and the model's config agree, so padding and stopping work."""

from transformers import PreTrainedModel, PreTrainedTokenizerBase


def set_special_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pad: str | None, eos: str | None
) -> None:
    """Set the tokenizer's pad and eos tokens (None keeps the current one) and copy their ids to the model.

    Both are objects `load` has just created, so changing them in place touches nothing of the caller's.
    """
    # The config and generation config each hold their own copy of the ids: sequence classification
    # pools at config.pad_token_id and generate() stops at generation_config.eos_token_id.
    configs = [model.config] + ([model.generation_config] if model.can_generate() else [])
    if pad is not None:
        tokenizer.pad_token = pad
        for config in configs:
            config.pad_token_id = tokenizer.pad_token_id
    if eos is not None:
        tokenizer.eos_token = eos
        for config in configs:
            config.eos_token_id = tokenizer.eos_token_id


def default_pad(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The token to pad with when the tokenizer has none: unk if it differs from eos, else eos.

    A pad distinct from eos keeps label masks built from the pad id from hiding real ends of sequence;
    GPT-2 style vocabularies have no such token, and padding with eos is the usual fallback there.
    """
    if tokenizer.pad_token is not None:
        return None
    if tokenizer.unk_token is not None and tokenizer.unk_token != tokenizer.eos_token:
        return tokenizer.unk_token
    return tokenizer.eos_token
