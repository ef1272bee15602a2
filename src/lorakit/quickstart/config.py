"""QuickstartConfig: what `lorakit quickstart` (the main job of `make demo`) trains and shows."""

from __future__ import annotations

from lorakit.core.schema import Schema


class QuickstartConfig(Schema):
    """What the quickstart trains and shows."""

    model: str = "smollm2-135m"
    """Built-in model name or a local transformers directory."""
    steps: int = 90
    """Optimizer steps (batch 8): about 2 passes over the 320 training records."""
    lr: float = 2e-3
    """Peak learning rate (10 warmup steps, then linear decay)."""
    rank: int = 8
    """LoRA rank on q_proj and v_proj."""
    heldout: int = 24
    """Held-out records to generate for and score, before and after."""
    show: int = 3
    """Records printed side by side."""
    out_dir: str = "runs/quickstart"
    """Where the adapter and a summary.json are written."""
    device: str = "auto"
    """auto, cpu or cuda."""
    seed: int = 0
    """Seeds LoRA's initialization and the data order."""
