"""`Policy`: one observation in, one checked action chunk out, with timings.

The facade between the control logic and the model. It holds a predictor (the model
side, ki_vla_ros/model/inference.py) through the small `Predictor` protocol below, so
this module imports no torch and the replay evaluator and the live node run the same
path. Whatever the predictor returns is checked (shape, finite) before it can become a
command: a bad chunk raises `PolicyError` and no chunk exists.
"""

from __future__ import annotations

import time
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ki_vla_ros.runtime.action_chunk import ActionChunk, InferenceTimings
from ki_vla_ros.runtime.chunking import TIME_TOLERANCE_S, Trajectory
from ki_vla_ros.runtime.config import RobotConfig
from ki_vla_ros.runtime.observation import Observation

__all__ = ["ActionChunk", "InferenceTimings", "Policy", "PolicyError", "Predictor"]


class PolicyError(RuntimeError):
    """The policy cannot produce a usable chunk; the message says what was wrong."""


@runtime_checkable
class Predictor(Protocol):
    num_cameras: int
    state_dim: int
    action_dim: int
    horizon: int

    def predict_chunk(self, images: Sequence[np.ndarray | None], state: np.ndarray, prompt: str,
                      noise: np.ndarray | None = None, previous_actions: np.ndarray | None = None,
                      inference_delay_steps: int = 0) -> np.ndarray:
        """-> float32 [horizon, action_dim] in robot units. previous_actions [K <= horizon,
        action_dim] (robot units, at this chunk's step times) asks for real-time chunking
        with the first inference_delay_steps of them frozen (model/rtc.py)."""
        ...

    def generate_subtask(self, images: Sequence[np.ndarray | None], task: str,
                         max_new_tokens: int = 24) -> str:
        ...


class Policy:
    """Runs a predictor on Observations of one embodiment."""

    def __init__(self, predictor: Predictor, config: RobotConfig):
        self.predictor = predictor
        self.config = config
        self._check_predictor_fits_robot()

    def _check_predictor_fits_robot(self) -> None:
        p, c = self.predictor, self.config
        problems = []
        if p.action_dim != c.action_dim:
            problems.append(f"action_dim {p.action_dim}, robot has {c.action_dim} "
                            f"action dims {list(c.action_names)}")
        if p.state_dim != c.state_dim:
            problems.append(f"state_dim {p.state_dim}, robot has {c.state_dim} "
                            f"state dims {list(c.state_names)}")
        if p.num_cameras < c.num_image_slots:
            problems.append(f"{p.num_cameras} image slots, the config uses "
                            f"{c.num_image_slots} ({[(cam.name, cam.slot) for cam in c.cameras]})")
        if p.horizon < c.chunk.horizon_steps:
            problems.append(f"horizon {p.horizon}, chunk.horizon_steps is {c.chunk.horizon_steps}")
        if problems:
            raise PolicyError(f"model does not fit robot '{c.name}' ({c.source}): "
                              + "; ".join(problems))

    def infer(self, observation: Observation, noise: np.ndarray | None = None, running: Trajectory | None = None,
              delay_steps: int = 0) -> ActionChunk:
        """Observation -> ActionChunk of chunk.horizon_steps steps starting at the observation.

        running: the trajectory being executed; given, the chunk is sampled with real-time
        chunking toward it (`running_actions`), its first delay_steps steps frozen to it.
        """
        t0 = time.perf_counter()
        prompt = observation.prompt.strip()
        if not prompt:
            raise PolicyError("observation has no instruction; the policy does not move "
                              "without one (set default_instruction or publish one)")
        state = observation.model_state()
        if state.shape != (self.predictor.state_dim,) or not np.all(np.isfinite(state)):
            raise PolicyError(f"observation state has shape {state.shape} with values {state}; "
                              f"expected {self.predictor.state_dim} finite values")
        images = list(observation.images)
        images += [None] * (self.predictor.num_cameras - len(images))  # unused model slots
        previous = None if running is None else self.running_actions(observation.stamp_s, running)
        t1 = time.perf_counter()
        if previous is None:
            raw = self.predictor.predict_chunk(images, state, prompt, noise=noise)
        else:
            raw = self.predictor.predict_chunk(images, state, prompt, noise=noise, previous_actions=previous,
                                               inference_delay_steps=delay_steps)
        t2 = time.perf_counter()
        actions = self._checked(raw)
        t3 = time.perf_counter()
        timings = InferenceTimings(preprocess_ms=(t1 - t0) * 1e3, inference_ms=(t2 - t1) * 1e3,
                                   total_ms=(t3 - t0) * 1e3)
        return ActionChunk(
            stamp_s=observation.stamp_s,
            start_time_s=observation.stamp_s + self.config.chunk.step_duration_s,
            step_duration_s=self.config.chunk.step_duration_s,
            action_names=self.config.action_names,
            actions=actions,
            inference_latency_s=t3 - t0,
            instruction=prompt,
            timings=timings,
        )

    def running_actions(self, stamp_s: float, running: Trajectory) -> np.ndarray | None:
        """The running trajectory at the step times of a chunk from the observation at stamp_s
        (step k due at stamp_s + (k + 1) * dt) -> float32 [K, action_dim], K = the steps it still
        covers (at most the model's horizon); None when it covers none."""
        if running.action_names != tuple(self.config.action_names):
            raise PolicyError(f"running trajectory is over {running.action_names}; expected "
                              f"{self.config.action_names}")
        dt = self.config.chunk.step_duration_s
        times = stamp_s + dt * (1 + np.arange(self.predictor.horizon))
        covered = int(np.sum(times <= running.end_time_s + TIME_TOLERANCE_S))
        if covered == 0:
            return None
        return running.sample(times[:covered]).astype(np.float32)

    def _checked(self, raw: object) -> np.ndarray:
        expected = (self.predictor.horizon, self.config.action_dim)
        actions = np.asarray(raw)
        if actions.shape != expected:
            raise PolicyError(f"predictor returned actions of shape {actions.shape}; "
                              f"expected [horizon, action_dim] = {list(expected)}")
        if not np.issubdtype(actions.dtype, np.floating):
            raise PolicyError(f"predictor returned {actions.dtype} actions; expected float32")
        bad = ~np.isfinite(actions)
        if bad.any():
            step, dim = map(int, np.argwhere(bad)[0])
            raise PolicyError(f"predictor returned {int(bad.sum())} non-finite action value(s), "
                              f"first {actions[step, dim]} for '{self.config.action_names[dim]}' at "
                              f"step {step}; no chunk")
        return np.ascontiguousarray(actions[: self.config.chunk.horizon_steps], dtype=np.float32)

    def subtask(self, images: Sequence[np.ndarray | None], task: str) -> str:
        """High-level task -> the next subtask text (the planner's decode)."""
        padded = list(images) + [None] * (self.predictor.num_cameras - len(images))
        text = self.predictor.generate_subtask(padded, task,
                                               max_new_tokens=self.config.planner.max_new_tokens)
        return text.strip()
