"""Every training stage of the experiments runs the package's one training loop, train.trainer.train.

A stage (VLM pretraining, a recipe's VLA training, a DAgger round) differs from a product run
in three settings, and only these:

    batches    the experiments' samplers (batches.py) draw a whole batch at a time from one
               numpy Generator seeded with the stage's seed: SequentialBatches calls
               sampler.sample(batch_size, rng) once per step, in order
    optimizer  torch's AdamW defaults (betas 0.9 / 0.999) with weight decay 1e-4
    torch RNG  seeded once with the stage's seed (the samplers leave the flow noise and time
               to torch), not reseeded every step

With them the loop computes exactly what the experiments' own loop did before it was folded
into the trainer: the shipped demo checkpoint is reproduced byte for byte
(docs/demo_checkpoint.md). Everything else (warm-up + cosine to 10 % of the peak, global-norm
clipping, the recipe's losses, the vision tower's learning-rate fraction) is the trainer's.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ki_vla_ros.model.network import KIVLA, TrainingBatch
from ki_vla_ros.train.trainer import TrainConfig, train

ADAM_BETAS = (0.9, 0.999)  # torch's AdamW defaults
WEIGHT_DECAY = 1e-4


@dataclasses.dataclass(frozen=True)
class StageConfig:
    recipe: str = "ki"
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 30
    seed: int = 0
    device: str = "cpu"
    # The vision tower's learning rate as a fraction of lr; 0 leaves the tower as it is. At the
    # study's size a from-scratch tower trained at the full rate collapses to features that do
    # not depend on the image (docs/demo_checkpoint.md).
    vision_lr_scale: float = 1.0

    def __post_init__(self):
        check_vision_lr_scale(self.vision_lr_scale)


def check_vision_lr_scale(scale: float) -> None:
    if not scale >= 0:  # also rejects NaN
        raise ValueError(f"vision_lr_scale={scale}: expected a fraction >= 0 of the learning rate")


class SequentialBatches:
    """batches(step) for train(): one batch of sampler.sample(batch_size, rng) per step, all from
    one Generator seeded with `seed`, so a stage must ask for its steps in order (0, 1, ...)."""

    def __init__(self, sampler, batch_size: int, seed: int):
        self.sampler, self.batch_size = sampler, batch_size
        self.rng = np.random.default_rng(seed)
        self.next_step = 0

    def __call__(self, step: int) -> list[TrainingBatch]:
        if step != self.next_step:
            raise RuntimeError(f"SequentialBatches was asked for step {step}; expected step {self.next_step} "
                               f"(its batches come from one random stream, in order; it cannot resume)")
        self.next_step += 1
        return [self.sampler.sample(self.batch_size, self.rng)]


def train_config(stage: StageConfig, log_every: int) -> TrainConfig:
    """The trainer's settings for a stage (no files, no progress bar, float32, co-training mixed by
    the sampler)."""
    return TrainConfig(recipe=stage.recipe, steps=stage.steps, batch_size=stage.batch_size, lr=stage.lr,
                       weight_decay=WEIGHT_DECAY, betas=ADAM_BETAS, warmup_steps=stage.warmup_steps,
                       vlm_ratio=0.0, seed=stage.seed, log_every=log_every, device=stage.device, amp="off",
                       progress=False, vision_lr_scale=stage.vision_lr_scale, reseed_torch_every_step=False)


def train_stage(model: KIVLA, sampler, stage: StageConfig,
                callback: Callable[[int, KIVLA], None] | None = None, every: int = 0) -> list[dict]:
    """Train `model` in place for stage.steps on sampler's batches; returns the trainer's metrics
    (one dict per logged step: step, lr, total, ce, flow, grad_norm, seconds, steps_per_s).

    callback(step, model) runs after every `every` steps and after the last (model in eval mode);
    every=0: only after the last. The trainer logs at the same steps."""
    log_every = every if every > 0 else stage.steps
    on_log = None if callback is None else (lambda step, metrics, m: callback(step, m))
    return train(model, train_config(stage, log_every), batches=SequentialBatches(sampler, stage.batch_size,
                                                                                   stage.seed),
                 callback=on_log)


def mean_step_seconds(history: list[dict]) -> float:
    """Seconds per step over a stage from its logged metrics."""
    return history[-1]["seconds"] / history[-1]["step"]
