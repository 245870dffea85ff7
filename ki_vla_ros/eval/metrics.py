"""Open-loop error of predicted action chunks against what was recorded.

A `Window` is one observation's comparison: the predicted chunk [H, D] against the
recorded targets at the chunk's step times, where `compared` [H, D] says which entries
count (a target exists there, and in latency-aware mode the step would still have been
executed). Errors are prediction - recorded, in robot units; "normalized" divides by the
dimension's range (joint upper - lower from the config; 2 * max_velocity for base dims),
so a 0.01 error on a 5.8 rad joint and on a 0.04 m gripper are comparable.

`ErrorStats` accumulates windows (overall, per episode) into per-dimension MAE / RMSE and
error by horizon step. It also keeps the span of the recorded targets per dim: a joint whose
targets span less than MOVING_FRACTION of its range "never moved" in the evaluation, and the
headline error (`overall(moving)`) averages over the moving dims only, since a still joint's
near-zero error would flatter it. Everything here is plain numpy; nothing knows about bags or ROS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ki_vla_ros.runtime.config import RobotConfig, is_gripper_joint

LATENCY_PERCENTILES = (50, 90, 99)
MOVING_FRACTION = 0.01  # a dim whose recorded targets span less than this fraction of its range did not move
GRIPPER_METRES_MAX = 0.2  # a gripper joint with a smaller range is taken to be prismatic (m)


def action_ranges(config: RobotConfig) -> np.ndarray:
    """float64 [action_dim]: the span each action dim can take, for normalized errors."""
    ranges = [config.joint_limits[j].upper - config.joint_limits[j].lower for j in config.joints]
    base = config.base_group
    if base is not None:
        ranges += [2.0 * v for v in base.max_velocity]
    return np.asarray(ranges, dtype=np.float64)


def action_units(config: RobotConfig) -> list[str]:
    """Unit of each action dim, for axis labels: rad for joints, m for grippers whose range is below
    GRIPPER_METRES_MAX (prismatic fingers; the config does not state units), m/s or rad/s for
    base velocities."""
    units = []
    for joint in config.joints:
        limits = config.joint_limits[joint]
        prismatic = is_gripper_joint(joint) and limits.upper - limits.lower <= GRIPPER_METRES_MAX
        units.append("m" if prismatic else "rad")
    base = config.base_group
    if base is not None:
        units += ["rad/s" if d == "wz" else "m/s" for d in base.dims]
    return units


def first_executed_step(latency_s: float, step_duration_s: float, lead_s: float = 0.0) -> int:
    """Step k is due lead_s + k * dt after the observation (lead_s = chunk start_time - stamp,
    one step for the policy's chunks). Steps due before the chunk arrives (latency_s after the
    observation) are dropped by the robot (runtime/chunking.py): the first executed step is
    ceil((latency - lead) / dt)."""
    return max(0, math.ceil((latency_s - lead_s) / step_duration_s - 1e-9))


@dataclass(frozen=True)
class Window:
    bag: str
    stamp_s: float  # observation stamp = time of step 0
    step_duration_s: float
    predicted: np.ndarray  # float64 [H, D]
    recorded: np.ndarray  # float64 [H, D], NaN where nothing was recorded
    compared: np.ndarray  # bool [H, D]
    inference_ms: float  # Policy.infer total
    latency_s: float  # observation age + inference: what the robot would have lost
    first_compared_step: int  # 0, or first_executed_step(latency) in latency-aware mode
    bag_start_s: float = 0.0  # the bag's first message, on the stamps' clock (plots count time from it)

    @property
    def errors(self) -> np.ndarray:
        """prediction - recorded [H, D]; 0 where not compared."""
        return np.where(self.compared, self.predicted - np.nan_to_num(self.recorded), 0.0)

    def normalized_mae(self, ranges: np.ndarray) -> float:
        n = int(self.compared.sum())
        return float(np.abs(self.errors / ranges).sum() / n) if n else math.nan


class ErrorStats:
    """Sums of |e| and e^2 per (step, dim) over windows; summaries on demand."""

    def __init__(self, action_names: Sequence[str], ranges: np.ndarray, horizon: int):
        self.action_names = tuple(action_names)
        self.ranges = np.asarray(ranges, dtype=np.float64)
        self.horizon = horizon
        shape = (horizon, len(self.action_names))
        self.sum_abs = np.zeros(shape)
        self.sum_sq = np.zeros(shape)
        self.count = np.zeros(shape, dtype=np.int64)
        self.recorded_min = np.full(len(self.action_names), np.inf)  # over compared targets
        self.recorded_max = np.full(len(self.action_names), -np.inf)
        self.windows = 0

    def add(self, window: Window) -> None:
        errors = window.errors
        self.sum_abs += np.abs(errors)
        self.sum_sq += errors**2
        self.count += window.compared
        recorded = np.where(window.compared, window.recorded, np.nan)
        seen = window.compared.any(0)
        self.recorded_min[seen] = np.minimum(self.recorded_min[seen], np.nanmin(recorded[:, seen], axis=0))
        self.recorded_max[seen] = np.maximum(self.recorded_max[seen], np.nanmax(recorded[:, seen], axis=0))
        self.windows += 1

    def moving(self) -> np.ndarray:
        """bool [D]: dims whose recorded targets span at least MOVING_FRACTION of their range."""
        span = np.where(self.recorded_max >= self.recorded_min, self.recorded_max - self.recorded_min, 0.0)
        return span >= MOVING_FRACTION * self.ranges

    def per_dim(self) -> dict[str, dict[str, float | int | None]]:
        count = self.count.sum(0)
        mae = _ratio(self.sum_abs.sum(0), count)
        rmse = np.sqrt(_ratio(self.sum_sq.sum(0), count))
        moving = self.moving()
        span = np.maximum(self.recorded_max - self.recorded_min, 0.0)
        return {name: {"mae": _num(mae[d]), "rmse": _num(rmse[d]),
                       "mae_normalized": _num(mae[d] / self.ranges[d]),
                       "rmse_normalized": _num(rmse[d] / self.ranges[d]),
                       "range": float(self.ranges[d]), "compared": int(count[d]),
                       "recorded_span": float(span[d]) if count[d] else 0.0, "moved": bool(moving[d])}
                for d, name in enumerate(self.action_names)}

    def overall(self, dims: np.ndarray | None = None) -> dict[str, float | int | None]:
        """Means over every compared (step, dim) entry, errors divided by the dim's range.
        dims: bool [D], only those dims (e.g. moving()); default all."""
        keep = np.ones(len(self.action_names), bool) if dims is None else np.asarray(dims, bool)
        n = int(self.count[:, keep].sum())
        sum_abs_norm = (self.sum_abs / self.ranges)[:, keep].sum()
        sum_sq_norm = (self.sum_sq / self.ranges**2)[:, keep].sum()
        return {"mae_normalized": _num(sum_abs_norm / n) if n else None,
                "rmse_normalized": _num(math.sqrt(sum_sq_norm / n)) if n else None,
                "compared": n, "windows": self.windows}

    def by_step(self, step_duration_s: float) -> dict[str, list]:
        count = self.count.sum(1)
        mae_norm = _ratio((self.sum_abs / self.ranges).sum(1), count)
        rmse_norm = np.sqrt(_ratio((self.sum_sq / self.ranges**2).sum(1), count))
        mae_dim = _ratio(self.sum_abs, self.count)
        return {
            "step": list(range(self.horizon)),
            "time_s": [round(k * step_duration_s, 9) for k in range(self.horizon)],
            "mae_normalized": [_num(v) for v in mae_norm],
            "rmse_normalized": [_num(v) for v in rmse_norm],
            "compared": [int(c) for c in count],
            "mae_per_dim": {name: [_num(v) for v in mae_dim[:, d]]
                            for d, name in enumerate(self.action_names)},
        }


def percentiles(values: Iterable[float], ps: Sequence[int] = LATENCY_PERCENTILES) -> dict[str, float | None]:
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return {**{f"p{p}": None for p in ps}, "mean": None, "max": None, "count": 0}
    out: dict[str, float | None] = {f"p{p}": round(float(np.percentile(data, p)), 3) for p in ps}
    out.update(mean=round(float(data.mean()), 3), max=round(float(data.max()), 3), count=int(data.size))
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _num(value: float) -> float | None:
    """A JSON-safe number: NaN (nothing compared) becomes None."""
    value = float(value)
    return None if math.isnan(value) else value
