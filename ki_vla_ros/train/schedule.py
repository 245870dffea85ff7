"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (openpi's recipe).

    lr(step) = peak * (step + 1) / warmup                             step < warmup
    lr(step) = floor + (peak - floor) * (1 + cos(pi * p)) / 2         p = (step - warmup) / (total - warmup)
    floor    = peak * final_ratio                                     (default 10% of the peak)

`step` counts the optimizer updates already made (0-based). With warm-up the first update
uses peak / warmup_steps, never exactly 0 (which would waste a step); without, the peak.
"""

from __future__ import annotations

import math


def learning_rate(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int,
                  final_ratio: float = 0.1) -> float:
    """The learning rate for update number `step` (0-based)."""
    if peak_lr < 0 or warmup_steps < 0 or total_steps <= 0 or not 0 <= final_ratio <= 1:
        raise ValueError(f"schedule peak_lr={peak_lr}, warmup_steps={warmup_steps}, total_steps={total_steps}, "
                         f"final_ratio={final_ratio}; expected lr >= 0, warmup >= 0, total > 0, ratio in [0, 1]")
    if step < warmup_steps:  # (step + 1): update 0 already moves the weights
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = peak_lr * final_ratio
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
