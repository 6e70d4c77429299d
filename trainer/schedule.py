"""Learning-rate schedule of the reference trainer, as pure functions of the step.

The reference builds a ``LambdaLR`` per parameter group and steps it after every
optimizer step, so batch ``i`` trains with ``lr_max * factor(i)``:

- cosine: linear warmup from 0 over ``warmup_steps``, cosine decay from ``lr_max`` to
  ``lr_min`` until ``decay_steps``, then ``lr_min``;
- linear (``torch.optim.lr_scheduler.LinearLR``): from ``lr_max`` to ``lr_min`` over
  ``decay_steps``, no warmup. As in the reference, the day group uses the same factor
  (``lr_min / lr_max``) times its own ``lr_max_day``.

Because the schedule is a pure function, the step alone is its checkpoint state.
"""

from __future__ import annotations

import math

from .config import TrainConfig


def cosine_factor(step: int, *, min_ratio: float, warmup_steps: int, decay_steps: int) -> float:
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if step < decay_steps:
        progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(min_ratio, min_ratio + (1.0 - min_ratio) * cosine)
    return min_ratio


def linear_factor(step: int, *, min_ratio: float, decay_steps: int) -> float:
    return 1.0 + (min_ratio - 1.0) * min(step, decay_steps) / decay_steps


def learning_rates(cfg: TrainConfig, step: int) -> tuple[float, float]:
    """(main lr, day-layer lr) for training batch ``step`` (0-based)."""
    if cfg.lr_scheduler_type == "linear":
        factor = linear_factor(step, min_ratio=cfg.lr_min / cfg.lr_max, decay_steps=cfg.lr_decay_steps)
        return cfg.lr_max * factor, cfg.lr_max_day * factor
    main = cosine_factor(
        step, min_ratio=cfg.lr_min / cfg.lr_max, warmup_steps=cfg.lr_warmup_steps, decay_steps=cfg.lr_decay_steps
    )
    day = cosine_factor(
        step,
        min_ratio=cfg.lr_min_day / cfg.lr_max_day,
        warmup_steps=cfg.lr_warmup_steps_day,
        decay_steps=cfg.lr_decay_steps_day,
    )
    return cfg.lr_max * main, cfg.lr_max_day * day
