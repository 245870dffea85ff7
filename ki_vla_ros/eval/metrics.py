"""Open-loop error of predicted action chunks against what was recorded.

A `Window` is one observation's comparison: the predicted chunk [H, D] against the
recorded targets at the chunk's step times, where `compared` [H, D] says which entries
count (a target exists there, and in latency-aware mode the step would still have been
executed). Errors are prediction - recorded, in robot units; "normalized" divides by the
dimension's range (joint upper - lower from the config; 2 * max_velocity for base dims),
so a 0.01 error on a 5.8 rad joint and on a 0.04 m gripper are comparable.

`ErrorStats` accumulates windows (overall, per episode) into per-dimension MAE / RMSE and
error by horizon step. Everything here is plain numpy; nothing knows about bags or ROS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ki_vla_ros.runtime.config import RobotConfig

LATENCY_PERCENTILES = (50, 90, 99)


def action_ranges(config: RobotConfig) -> np.ndarray:
    """float64 [action_dim]: the span each action dim can take, for normalized errors."""
    ranges = [config.joint_limits[j].upper - config.joint_limits[j].lower for j in config.joints]
    base = config.base_group
    if base is not None:
        ranges += [2.0 * v for v in base.max_velocity]
    return np.asarray(ranges, dtype=np.float64)


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
        self.windows = 0

    def add(self, window: Window) -> None:
        errors = window.errors
        self.sum_abs += np.abs(errors)
        self.sum_sq += errors**2
        self.count += window.compared
        self.windows += 1

    def per_dim(self) -> dict[str, dict[str, float | int | None]]:
        count = self.count.sum(0)
        mae = _ratio(self.sum_abs.sum(0), count)
        rmse = np.sqrt(_ratio(self.sum_sq.sum(0), count))
        return {name: {"mae": _num(mae[d]), "rmse": _num(rmse[d]),
                       "mae_normalized": _num(mae[d] / self.ranges[d]),
                       "rmse_normalized": _num(rmse[d] / self.ranges[d]),
                       "range": float(self.ranges[d]), "compared": int(count[d])}
                for d, name in enumerate(self.action_names)}

    def overall(self) -> dict[str, float | int | None]:
        """Means over every compared (step, dim) entry, errors divided by the dim's range."""
        n = int(self.count.sum())
        sum_abs_norm = (self.sum_abs / self.ranges).sum()
        sum_sq_norm = (self.sum_sq / self.ranges**2).sum()
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
