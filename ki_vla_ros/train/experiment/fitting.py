"""The optimisation loop of every stage of the study (VLM pretraining, VLA training).

AdamW, linear warm-up then cosine decay to 10 % of the peak, global-norm gradient
clipping, the model's own `compute_loss(batch, recipe)`. It is deliberately small: the
study needs an `on_step` hook to measure the action error while training, and runs on a
2-core CPU where every millisecond of overhead shows (or on a GPU: FitConfig.device).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch

from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.train.schedule import learning_rate


@dataclasses.dataclass(frozen=True)
class FitConfig:
    recipe: str = "ki"
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    grad_clip_norm: float = 1.0
    seed: int = 0
    device: str = "cpu"  # where the batches go; the caller puts the model there
    # The vision tower's learning rate as a fraction of lr; 0 leaves the tower as it is.
    # At the study's size a from-scratch tower trained at the full rate collapses to features
    # that do not depend on the image (docs/demo_checkpoint.md).
    vision_lr_scale: float = 1.0

    def __post_init__(self):
        check_vision_lr_scale(self.vision_lr_scale)


VISION_TOWER = ".vision_tower."


def check_vision_lr_scale(scale: float) -> None:
    if not scale >= 0:  # also rejects NaN
        raise ValueError(f"vision_lr_scale={scale}: expected a fraction >= 0 of the learning rate")


def lr_at(step: int, config: FitConfig) -> float:
    """Learning rate of `step` (0-based): the training core's warm-up + cosine to 10 % of config.lr."""
    return learning_rate(step, peak_lr=config.lr, warmup_steps=config.warmup_steps, total_steps=config.steps)


def param_groups(module: torch.nn.Module, vision_lr_scale: float) -> list[dict]:
    """module's trainable parameters as optimiser groups with an "lr_scale": the vision
    tower's at vision_lr_scale (left out when 0), everything else at 1."""
    check_vision_lr_scale(vision_lr_scale)
    vision, rest = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (vision if VISION_TOWER in f".{name}" else rest).append(p)
    groups = [{"params": rest, "lr_scale": 1.0}]
    if vision and vision_lr_scale > 0:
        groups.append({"params": vision, "lr_scale": vision_lr_scale})
    return groups


def fit(model: KIVLA, sampler, config: FitConfig,
        on_step: Callable[[int, KIVLA], None] | None = None,
        module: torch.nn.Module | None = None) -> list[dict]:
    """Train `model` in place for config.steps; returns per-step losses.

    sampler: anything with sample(batch_size, rng) -> TrainingBatch. on_step(step, model) is
    called before step 0 and after every step (step = number of updates done).
    module: the part of the model the optimiser updates (default: all of it), its vision
    tower at config.vision_lr_scale of the learning rate.
    """
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    groups = param_groups(module if module is not None else model, config.vision_lr_scale)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    history = []
    model.train()
    if on_step is not None:
        on_step(0, model)
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config) * group["lr_scale"]
        t0 = time.perf_counter()
        batch = sampler.sample(config.batch_size, rng).to(config.device)
        losses = model.compute_loss(batch, config.recipe)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip_norm)
        optimizer.step()
        history.append({"step": step + 1, "total": losses["total"].item(), "ce": losses["ce"].item(),
                        "flow": losses["flow"].item(), "grad_norm": grad_norm.item(),
                        "step_s": time.perf_counter() - t0})
        if on_step is not None:
            model.eval()
            on_step(step + 1, model)
            model.train()
    model.eval()
    return history
