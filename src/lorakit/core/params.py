"""Parameter counts and the report of what an adapter touches."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lorakit.core.state import wrappers


@dataclass(frozen=True)
class ModuleRow:
    name: str
    kind: str
    shape: tuple[int, ...]
    rank: int
    params: int


@dataclass(frozen=True)
class Report:
    """What adapter `adapter` adapts, and trainable vs total parameter counts of the model as it stands."""

    adapter: str
    modules: tuple[ModuleRow, ...]
    trainable: int
    total: int
    base_total: int

    def __str__(self) -> str:
        lines = [f"adapter {self.adapter!r}: {len(self.modules)} modules"]
        shown = self.modules if len(self.modules) <= 12 else self.modules[:6] + self.modules[-6:]
        for i, m in enumerate(shown):
            if len(self.modules) > 12 and i == 6:
                lines.append(f"  ... {len(self.modules) - 12} more")
            lines.append(f"  {m.name:<48} {m.kind:<10} {'x'.join(map(str, m.shape)):<12} r={m.rank:<4} {m.params:,}")
        lines.append(
            f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
            f"trainable%: {100 * self.trainable / max(self.total, 1):.4f}"
        )
        return "\n".join(lines)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def adapter_report(model: nn.Module, name: str) -> Report:
    """The Report for adapter `name` on a wrapped model."""
    rows: list[ModuleRow] = []
    adapter_params = 0
    for path, module in wrappers(model):
        if hasattr(module, "copies"):
            if name in module.copies:
                n = sum(p.numel() for p in module.copies[name].parameters())
                rows.append(ModuleRow(path, "saved", (), 0, n))
            continue
        if name not in module.lora_A:
            continue
        a, b = module.lora_A[name], module.lora_B[name]
        kind = type(module.base_layer).__name__
        rank = a.shape[0] // len(getattr(module, "enabled", [0]))
        rows.append(ModuleRow(path, kind, tuple(module.base_layer.weight.shape), rank, a.numel() + b.numel()))
    adapter_params = sum(
        p.numel() for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n or ".copies." in n
    )
    trainable, total = count_parameters(model)
    return Report(name, tuple(rows), trainable, total, total - adapter_params)
