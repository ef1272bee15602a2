"""lorakit's layers: a LoRA wrapper per adaptable module kind, and the full-copy wrapper of modules_to_save.

Each wrapper keeps the original module (`base_layer`, or `original_module` for full copies) so unwrap can hand back
the very same object, and any number of named adapters.
"""

from lorakit.core.layers.common import (
    MAGNITUDE,
    WHOLE_WEIGHT,
    DeltaBlock,
    active_name,
    apply_delta,
    put_adapter,
    remove_adapter,
)
from lorakit.core.layers.conv2d import LoraConv2d
from lorakit.core.layers.embedding import LoraEmbedding
from lorakit.core.layers.linear import LoraLinear
from lorakit.core.layers.saved import SavedModule

__all__ = ["MAGNITUDE", "WHOLE_WEIGHT", "DeltaBlock", "LoraConv2d", "LoraEmbedding", "LoraLinear", "SavedModule",
           "active_name", "apply_delta", "put_adapter", "remove_adapter"]
