"""The learning-rate schedule: linear warmup, then linear decay to zero (the LoRA paper's GPT-2 runs, Table 11)."""

from __future__ import annotations


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based).

    lr = peak·(step+1)/warmup during warmup, then peak·(total-step)/(total-warmup): it reaches peak at the last
    warmup step and would reach 0 one step after the last. A pure function of the step, so a resumed run needs
    no scheduler state beyond the step count.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
