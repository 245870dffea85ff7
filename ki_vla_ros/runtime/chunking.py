"""Chunk execution: latency compensation, blending, and when to ask for the next chunk.

A chunk's step k is meant for `start_time_s + k * dt`, where start_time_s is the time the
observation was taken. By the time the chunk exists the model has run for a while, so:

1. Latency compensation: steps whose time has passed are dropped,
   kept = {k : start_time_s + k * dt >= now_s}. Executing them late would replay the
   past and lag the whole chunk by the inference latency. A chunk whose last kept step is
   due less than ARRIVAL_MARGIN_S after now is not executed at all: its trajectory would
   reach the controller after its end, and joint_trajectory_controller rejects a
   trajectory that ends in the past.
2. Blending: the new chunk's first `blend_steps` kept steps are cross-faded from the
   trajectory being executed, sampled at the same instants:
       a_k = (1 - w_k) * old(t_k) + w_k * new_k,   w_k = (k + 1) / (blend_steps + 1)
   so a gap g between the old and the new plan is closed in blend_steps + 1 equal
   increments of g / (blend_steps + 1) instead of one jump. After the old trajectory's
   last step, old(t) holds its last value.
   Why this and not the alternatives: ACT's temporal ensembling averages every chunk
   that covers a step, which needs a model call every control step; pi0's real-time
   chunking inpaints the new chunk so it agrees with the committed prefix, which needs a
   guided sampler inside the model. A linear cross-fade works with any model and bounds
   the jump. chunk.mode "rtc" is that guided sampler (model/rtc.py): the policy gives the
   model the running trajectory at the new chunk's step times and the estimated delay
   (`DelayEstimate`), the model returns a chunk that already continues it, and the
   scheduler does not cross-fade.
3. Re-planning: ask for the next chunk once `execute_steps` steps of the current
   trajectory have run, or earlier when fewer than `min_remaining_steps` remain (a slow
   inference left little of the chunk); with no trajectory at all, ask right away.

Positions and times are float64 here: they become ROS float64 fields, and rounding to
float32 would turn a rate-limited command into one that exceeds its limit by an ulp.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from ki_vla_ros.runtime.action_chunk import ActionChunk
from ki_vla_ros.runtime.config import ChunkConfig

# Two clocks that should agree (a stamp and now_s) differ by rounding; a step due within
# a nanosecond of now has not passed.
TIME_TOLERANCE_S = 1e-9
# The shortest time between publishing a trajectory and its end: delivery to the controller
# (about 1 ms on one machine, a few ms over a network) plus headroom.
ARRIVAL_MARGIN_S = 0.02


@dataclass(frozen=True)
class Trajectory:
    """Commands at a fixed step in absolute time: step k at start_time_s + k * step_duration_s."""

    start_time_s: float
    step_duration_s: float
    action_names: tuple[str, ...]
    actions: np.ndarray  # float64 [K, D], K >= 1

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    @property
    def times_s(self) -> np.ndarray:
        return self.start_time_s + self.step_duration_s * np.arange(self.num_steps)

    @property
    def end_time_s(self) -> float:
        return self.start_time_s + (self.num_steps - 1) * self.step_duration_s

    def sample(self, time_s: float | np.ndarray) -> np.ndarray:
        """Linear interpolation between steps; before the first / after the last step the
        end value is held. time_s scalar -> [D]; time_s [N] -> [N, D]."""
        times = np.atleast_1d(np.asarray(time_s, dtype=np.float64))
        position = np.clip((times - self.start_time_s) / self.step_duration_s, 0.0, self.num_steps - 1)
        lower = np.floor(position).astype(int)
        upper = np.minimum(lower + 1, self.num_steps - 1)
        frac = (position - lower)[:, None]
        out = (1.0 - frac) * self.actions[lower] + frac * self.actions[upper]
        return out[0] if np.ndim(time_s) == 0 else out

    def with_actions(self, actions: np.ndarray) -> "Trajectory":
        return replace(self, actions=np.asarray(actions, dtype=np.float64))

    def steps_due_by(self, time_s: float) -> int:
        """How many steps' times are <= time_s (steps already commanded to happen)."""
        elapsed = (time_s - self.start_time_s + TIME_TOLERANCE_S) / self.step_duration_s
        return int(np.clip(np.floor(elapsed) + 1, 0, self.num_steps))


def compensate_latency(chunk: ActionChunk, now_s: float, horizon_steps: int | None = None
                       ) -> tuple[Trajectory | None, int]:
    """Drop the chunk's steps whose time has passed -> (trajectory of the rest, dropped count).

    Uses the first horizon_steps steps (all when None). Returns (None, n) when every step
    has passed: the chunk came too late to be of any use.
    """
    steps = chunk.num_steps if horizon_steps is None else min(horizon_steps, chunk.num_steps)
    times = chunk.start_time_s + chunk.step_duration_s * np.arange(steps)
    first_kept = int(np.searchsorted(times, now_s - TIME_TOLERANCE_S, side="left"))
    if first_kept >= steps:
        return None, steps
    return Trajectory(
        start_time_s=float(times[first_kept]),
        step_duration_s=chunk.step_duration_s,
        action_names=tuple(chunk.action_names),
        actions=np.asarray(chunk.actions[first_kept:steps], dtype=np.float64),
    ), first_kept


def blend(previous: Trajectory | None, new: Trajectory, blend_steps: int) -> Trajectory:
    """Cross-fade the first blend_steps steps of `new` from `previous` (see module doc)."""
    if previous is None or blend_steps <= 0:
        return new
    if previous.action_names != new.action_names:
        raise ValueError(f"cannot blend trajectories over different actions: "
                         f"{previous.action_names} vs {new.action_names}")
    n = min(blend_steps, new.num_steps)
    weights = (np.arange(n) + 1.0) / (blend_steps + 1.0)
    old = previous.sample(new.times_s[:n])
    actions = new.actions.copy()
    actions[:n] = (1.0 - weights[:, None]) * old + weights[:, None] * new.actions[:n]
    return new.with_actions(actions)


@dataclass(frozen=True)
class ChunkPlan:
    """What executing a new chunk now would command."""

    trajectory: Trajectory | None  # None: nothing to command (reason says why)
    dropped_steps: int  # steps whose time had passed (latency compensation)
    blended_steps: int  # leading steps cross-faded from the previous trajectory
    reason: str = ""


class ChunkScheduler:
    """Keeps the trajectory being executed; plans new chunks against it.

    Two phases so a safety filter can sit between planning and execution:
    `plan(chunk, now_s)` changes nothing; `commit(trajectory)` makes the (filtered)
    trajectory the current one. `hold()` forgets it, so the next chunk is not blended
    with a plan the robot stopped following.
    """

    def __init__(self, config: ChunkConfig):
        self.config = config
        self._current: Trajectory | None = None
        self._current_stamp_s: float | None = None

    @property
    def current(self) -> Trajectory | None:
        return self._current

    def plan(self, chunk: ActionChunk, now_s: float) -> ChunkPlan:
        if self._current_stamp_s is not None and chunk.stamp_s <= self._current_stamp_s:
            return ChunkPlan(None, 0, 0, reason=(
                f"chunk from observation {chunk.stamp_s:.6f} s is not newer than the one being "
                f"executed ({self._current_stamp_s:.6f} s); ignored"))
        if abs(chunk.step_duration_s - self.config.step_duration_s) > TIME_TOLERANCE_S:
            return ChunkPlan(None, 0, 0, reason=(
                f"chunk step duration {chunk.step_duration_s} s; expected the configured "
                f"chunk.step_duration_s {self.config.step_duration_s} s"))
        trajectory, dropped = compensate_latency(chunk, now_s, self.config.horizon_steps)
        if trajectory is None:
            return ChunkPlan(None, dropped, 0, reason=(
                f"all {dropped} steps of the chunk from {chunk.stamp_s:.6f} s had passed at "
                f"{now_s:.6f} s (latency {now_s - chunk.stamp_s:.3f} s)"))
        if trajectory.end_time_s < now_s + ARRIVAL_MARGIN_S:
            return ChunkPlan(None, dropped, 0, reason=(
                f"the chunk from {chunk.stamp_s:.6f} s ends at {trajectory.end_time_s:.6f} s, "
                f"{(trajectory.end_time_s - now_s) * 1e3:.1f} ms after now (latency {now_s - chunk.stamp_s:.3f} s); "
                f"a trajectory must end at least ARRIVAL_MARGIN_S = {ARRIVAL_MARGIN_S * 1e3:.0f} ms after it is "
                "sent, or it arrives after its end and the controller rejects it"))
        blend_steps = self.config.blend_steps if self.config.mode == "blend" else 0  # rtc: the model stitched
        blended = 0 if self._current is None else min(blend_steps, trajectory.num_steps)
        return ChunkPlan(blend(self._current, trajectory, blend_steps), dropped, blended)

    def commit(self, trajectory: Trajectory, stamp_s: float) -> None:
        """Make `trajectory` (from the observation at stamp_s) the one being executed."""
        self._current = trajectory
        self._current_stamp_s = stamp_s

    def hold(self) -> None:
        self._current = None

    def reference_at(self, time_s: float) -> np.ndarray | None:
        """What the current trajectory commands at time_s (None: no trajectory)."""
        return None if self._current is None else self._current.sample(time_s)

    def steps_executed(self, now_s: float) -> int:
        return 0 if self._current is None else self._current.steps_due_by(now_s)

    def steps_remaining(self, now_s: float) -> int:
        return 0 if self._current is None else self._current.num_steps - self.steps_executed(now_s)

    def should_request_chunk(self, now_s: float) -> bool:
        """True when the next chunk should be requested (the caller tracks in-flight requests)."""
        if self._current is None:
            return True
        return (self.steps_executed(now_s) >= self.config.execute_steps
                or self.steps_remaining(now_s) < self.config.min_remaining_steps)


class DelayEstimate:
    """RTC's inference delay d in steps, from measured latencies (observation stamp -> execution).

        d = ceil(p90 of the last `window` latencies / step_duration_s) + margin_steps

    The latency is measured where it matters, from the observation's stamp to the moment the
    chunk is executed (sync age + inference + transport), so a chunk's steps with index < d
    are the ones that will have run from the previous chunk by then (latency compensation
    drops them). An under-estimate lets a guided-but-not-frozen step run, which can jump
    (LeRobot #2541); an over-estimate only follows the old chunk a little longer. Hence the
    p90 rather than the median, and the margin. Before any measurement d = margin_steps.
    """

    def __init__(self, step_duration_s: float, margin_steps: int, window: int = 20, quantile: float = 0.9):
        self.step_duration_s = step_duration_s
        self.margin_steps = margin_steps
        self.quantile = quantile
        self._latencies_s: deque[float] = deque(maxlen=window)

    def add(self, latency_s: float) -> None:
        if math.isfinite(latency_s) and latency_s >= 0:
            self._latencies_s.append(latency_s)

    def steps(self) -> int:
        if not self._latencies_s:
            return self.margin_steps
        p = float(np.quantile(np.asarray(self._latencies_s), self.quantile))
        return math.ceil(p / self.step_duration_s - TIME_TOLERANCE_S) + self.margin_steps


def chunk_period_warning(config, inference_s: float | None = None) -> str | None:
    """Why the mux would hold between chunks with these settings, or None.

    The policy publishes a trajectory per chunk. After one is published, the next request
    comes once `execute_steps` steps have run, and its commands follow one inference later,
    so commands can be up to execute_steps * step_duration_s + inference_s apart. If that
    exceeds the mux's policy_timeout_s, the mux holds the robot between chunks.
    config: a RobotConfig; inference_s: the measured time of one chunk (None: not known yet).
    """
    chunk, timeout_s = config.chunk, config.mux.policy_timeout_s
    gap_s = chunk.execute_steps * chunk.step_duration_s + (inference_s or 0.0)
    if gap_s <= timeout_s:
        return None
    measured = f" + inference {inference_s:.3f} s" if inference_s else ""
    return (f"policy commands can be {gap_s:.3f} s apart (chunk.execute_steps {chunk.execute_steps} x "
            f"step_duration_s {chunk.step_duration_s} s{measured}), longer than command_mux."
            f"policy_timeout_s = {timeout_s} s: the mux will hold the robot between chunks; lower "
            "execute_steps or raise policy_timeout_s")
