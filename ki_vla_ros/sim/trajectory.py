"""A commanded joint trajectory as ros2_control's joint_trajectory_controller keeps it.

Time semantics (trajectory_msgs/JointTrajectory):
  - point k is due at start_time_s + time_from_start_s[k] (header.stamp + time_from_start);
    a start_time_s of 0 means "now", as in the controller;
  - points already due when the trajectory arrives are skipped; if every point is past,
    the trajectory is rejected and the previous one stays active (the controller's
    "trajectory ends in the past" rejection);
  - motion starts from the measured positions at arrival and interpolates linearly to
    each kept point in turn (point velocities are checked but not used for shaping);
  - after the last point the last positions are held;
  - an empty trajectory cancels motion: the group holds where it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class ActiveTrajectory:
    """Knots in absolute time: the arrival state first, then the kept points."""

    times_s: np.ndarray  # [K] strictly increasing
    positions: np.ndarray  # [K, J]

    def sample(self, time_s: float) -> np.ndarray:
        """Desired positions [J] at time_s: linear between knots, held outside them."""
        times = self.times_s
        if time_s <= times[0]:
            return self.positions[0].copy()
        if time_s >= times[-1]:
            return self.positions[-1].copy()
        k = int(np.searchsorted(times, time_s, side="right"))
        alpha = (time_s - times[k - 1]) / (times[k] - times[k - 1])
        return (1 - alpha) * self.positions[k - 1] + alpha * self.positions[k]

    @property
    def end_time_s(self) -> float:
        return float(self.times_s[-1])


def _point_fields(point: Any) -> tuple[float, Sequence[float], Sequence[float]]:
    """Accept (time_from_start_s, positions, velocities) tuples or runtime TrajectoryPoints."""
    if hasattr(point, "time_from_start_s"):
        return point.time_from_start_s, point.positions, point.velocities
    return point[0], point[1], point[2]


def build_trajectory(group: str, group_joints: Sequence[str], now_s: float,
                     current_positions: np.ndarray, start_time_s: float, points: Sequence[Any],
                     joint_names: Sequence[str] | None = None) -> ActiveTrajectory | None:
    """Check a command and turn it into knots; None when every point is already past.

    joint_names: the message's joint order, if it differs from the group's; it must name
    exactly the group's joints. Positions are reordered into the group's order.
    """
    joint_names = tuple(group_joints) if joint_names is None else tuple(joint_names)
    if sorted(joint_names) != sorted(group_joints):
        raise ValueError(f"trajectory for group '{group}' names joints {list(joint_names)}; "
                         f"expected exactly {list(group_joints)}")
    order = [joint_names.index(j) for j in group_joints]
    start_time_s = now_s if start_time_s == 0 else start_time_s
    times, rows = [], []
    previous_tfs = -np.inf
    for k, point in enumerate(points):
        tfs, positions, velocities = _point_fields(point)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (len(joint_names),) or not np.all(np.isfinite(positions)):
            raise ValueError(f"trajectory for group '{group}' point {k} positions = "
                             f"{positions.tolist()}; expected {len(joint_names)} finite values")
        if len(velocities) not in (0, len(joint_names)):
            raise ValueError(f"trajectory for group '{group}' point {k} has {len(velocities)} "
                             f"velocities; expected 0 or {len(joint_names)}")
        if not tfs > previous_tfs:
            raise ValueError(f"trajectory for group '{group}' point {k} time_from_start_s = "
                             f"{tfs}; expected strictly increasing times")
        previous_tfs = tfs
        if start_time_s + tfs > now_s:
            times.append(start_time_s + tfs)
            rows.append(positions[order])
    if not times:
        return None
    return ActiveTrajectory(np.array([now_s] + times), np.stack([current_positions] + rows))
