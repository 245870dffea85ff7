"""The action chunk: what the policy hands to execution, in robot units and absolute time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InferenceTimings:
    preprocess_ms: float  # observation -> model inputs (checks, slots, state layout)
    inference_ms: float  # predictor.predict_chunk
    total_ms: float  # whole Policy.infer call


@dataclass(frozen=True)
class ActionChunk:
    """H action steps for D action dims; step k is meant for start_time_s + k * step_duration_s.

    stamp_s: time of the observation the chunk was computed from (ActionChunk.msg: the
        newest stamp of the synchronized camera/joint-state set).
    start_time_s: when the robot should be at step 0 (= stamp_s + step_duration_s for the
        policy). The actions are position targets, as in the training data: actions[t] of an
        episode is where the robot is commanded to be one step after observation t. So step k
        of a chunk is due at stamp_s + (k + 1) * step_duration_s; execution drops the steps
        whose time passed while the model ran.
    actions: float32 [H, D] in robot units (rad, m, m/s), columns named by action_names.
    """

    stamp_s: float
    start_time_s: float
    step_duration_s: float
    action_names: tuple[str, ...]
    actions: np.ndarray
    inference_latency_s: float
    instruction: str
    timings: InferenceTimings | None = None

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    def step_time_s(self, k: int) -> float:
        return self.start_time_s + k * self.step_duration_s
