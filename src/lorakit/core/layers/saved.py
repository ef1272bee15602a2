"""The wrapper that trains a full copy of a module per adapter (PEFT's modules_to_save, e.g. a classifier head)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lorakit.core.layers.common import row_ids_for
from lorakit.core.state import AdapterState, register_wrapper


@register_wrapper
class SavedModule(nn.Module):
    """A module trained in full per adapter (e.g. a classifier head): the original stays untouched for the base."""

    def __init__(self, original_module: nn.Module, state: AdapterState):
        super().__init__()
        self.original_module = original_module
        self.copies = nn.ModuleDict()
        object.__setattr__(self, "state", state)

    def add_copy(self, name: str) -> None:
        c = copy.deepcopy(self.original_module)
        for p in c.parameters():
            p.requires_grad_(True)
        self.copies[name] = c

    def remove_adapter(self, name: str) -> None:
        if name in self.copies:
            del self.copies[name]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        st = self.state
        if st.rows is not None and not st.disabled and len(self.copies):
            rows = row_ids_for(st, x.shape[0])
            out = self.original_module(x, *args, **kwargs)
            for idx in rows.unique().tolist():
                name = st.names[idx - 1] if idx else None
                if name in self.copies:
                    sel = (rows == idx).nonzero().squeeze(1)
                    out = out.index_copy(0, sel, self.copies[name](x[sel], *args, **kwargs).to(out.dtype))
            return out
        name = None if st.disabled else st.active
        module = self.copies[name] if name in self.copies else self.original_module
        return module(x, *args, **kwargs)
