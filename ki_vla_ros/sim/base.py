"""A holonomic mobile base driven by velocity commands, as a base controller runs it.

A command (geometry_msgs/Twist: vx, vy in the base frame, wz) stays in force until a
newer one arrives or `timeout_s` has passed since its stamp; then the target is zero,
as in diff_drive/omni controllers' cmd_vel timeout. The measured velocity moves toward
the target no faster than the configured max_acceleration and never above
max_velocity; the pose integrates it (midpoint heading per tick).
"""

from __future__ import annotations

import math

import numpy as np

from ki_vla_ros.runtime.config import BASE_TWIST_DIMS, ActionGroupConfig
from ki_vla_ros.sim.kinematics import Pose2D


class HolonomicBase:
    def __init__(self, group: ActionGroupConfig, pose: Pose2D = Pose2D(), timeout_s: float = 0.5):
        self.group = group
        self.timeout_s = timeout_s
        # Dims the config leaves out (e.g. vy on a differential base) can never move.
        self._max_velocity = np.zeros(3)
        self._max_acceleration = np.zeros(3)
        for dim, v_max, a_max in zip(group.dims, group.max_velocity, group.max_acceleration):
            i = BASE_TWIST_DIMS.index(dim)
            self._max_velocity[i], self._max_acceleration[i] = v_max, a_max
        self.pose = pose
        self.velocity = np.zeros(3)  # vx, vy (base frame, m/s), wz (rad/s)
        self._command = np.zeros(3)
        self._command_stamp_s = -math.inf

    def command(self, vx: float, vy: float, wz: float, stamp_s: float) -> None:
        values = np.array([vx, vy, wz], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"twist for base group '{self.group.name}' = {values.tolist()}; "
                             "expected finite vx, vy, wz")
        self._command = values
        self._command_stamp_s = stamp_s

    def target_velocity(self, time_s: float) -> np.ndarray:
        if time_s - self._command_stamp_s > self.timeout_s:
            return np.zeros(3)
        return np.clip(self._command, -self._max_velocity, self._max_velocity)

    def tick(self, time_s: float, dt_s: float) -> None:
        """Advance velocity and pose by one controller period ending at time_s."""
        max_change = self._max_acceleration * dt_s
        change = np.clip(self.target_velocity(time_s) - self.velocity, -max_change, max_change)
        self.velocity = self.velocity + change
        vx, vy, wz = self.velocity
        heading = self.pose.yaw + 0.5 * wz * dt_s
        c, s = math.cos(heading), math.sin(heading)
        yaw = math.atan2(math.sin(self.pose.yaw + wz * dt_s), math.cos(self.pose.yaw + wz * dt_s))
        self.pose = Pose2D(self.pose.x + (c * vx - s * vy) * dt_s,
                           self.pose.y + (s * vx + c * vy) * dt_s, yaw)
