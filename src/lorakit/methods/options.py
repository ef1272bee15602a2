"""The sizes of the non-LoRA methods (LoRA's rank is LoraConfig's)."""

from __future__ import annotations

from pydantic import Field

from lorakit.core.schema import Schema


class MethodOptions(Schema):
    """Sizes of the non-LoRA methods (LoRA's rank lives in the lora section)."""

    bottleneck: int = Field(16, ge=1)
    """r of adapter-h and adapter-l: each adapter maps d -> r -> d (Houlsby et al., 2019)."""
    prefix_length: int = Field(16, ge=1)
    """l_p of prefix-embed, prefix-layer, prompt-tuning and lora+prefix: trainable positions prepended to every
    input (Li & Liang, 2021)."""
