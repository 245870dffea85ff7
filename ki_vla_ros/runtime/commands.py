"""Trajectory -> per-action-group commands, in the shape the controllers take them.

joint_trajectory groups -> `JointTrajectoryCommand`, a ROS-free trajectory_msgs/
JointTrajectory for ros2_control's joint_trajectory_controller:
    header.stamp  = start_time_s, the absolute time of the first kept step
    point k       = time_from_start_s k * dt, positions, velocities
Velocities are finite differences of the positions (central inside, forward at the
first point); the last point has velocity 0 so that, if no new chunk replaces this
one, the controller's spline comes to rest at the last position instead of overshooting.

base_twist groups -> `TwistCommand` samples (geometry_msgs/Twist: linear.x, linear.y,
angular.z) at the control rate, by sampling the trajectory's base dims; a base has no
trajectory controller, so the node streams these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ki_vla_ros.runtime.chunking import Trajectory
from ki_vla_ros.runtime.config import ActionGroupConfig, RobotConfig


@dataclass(frozen=True)
class TrajectoryPoint:
    time_from_start_s: float
    positions: tuple[float, ...]
    velocities: tuple[float, ...]


@dataclass(frozen=True)
class JointTrajectoryCommand:
    group: str
    joint_names: tuple[str, ...]
    start_time_s: float  # header.stamp: absolute time of points[0]
    points: tuple[TrajectoryPoint, ...]


@dataclass(frozen=True)
class TwistCommand:
    group: str
    time_s: float  # when this velocity applies
    linear_x: float = 0.0
    linear_y: float = 0.0
    angular_z: float = 0.0


_TWIST_FIELD = {"vx": "linear_x", "vy": "linear_y", "wz": "angular_z"}


def finite_difference_velocities(positions: np.ndarray, step_duration_s: float) -> np.ndarray:
    """[K, J] positions -> [K, J] velocities (central inside, forward first, zero last)."""
    velocities = np.zeros_like(positions, dtype=np.float64)
    k = positions.shape[0]
    if k >= 2:
        velocities[0] = (positions[1] - positions[0]) / step_duration_s
    if k >= 3:
        velocities[1:-1] = (positions[2:] - positions[:-2]) / (2.0 * step_duration_s)
    return velocities


def joint_trajectory_commands(trajectory: Trajectory, config: RobotConfig) -> list[JointTrajectoryCommand]:
    """One command per joint_trajectory group, in config order."""
    _check_layout(trajectory, config)
    commands = []
    for group in config.action_groups:
        if group.kind != "joint_trajectory":
            continue
        positions = trajectory.actions[:, list(config.action_indices(group))]
        velocities = finite_difference_velocities(positions, trajectory.step_duration_s)
        points = tuple(
            TrajectoryPoint(k * trajectory.step_duration_s, tuple(map(float, positions[k])),
                            tuple(map(float, velocities[k])))
            for k in range(trajectory.num_steps))
        commands.append(JointTrajectoryCommand(group.name, group.joints, trajectory.start_time_s, points))
    return commands


def twist_at(trajectory: Trajectory, config: RobotConfig, time_s: float) -> TwistCommand | None:
    """The base velocity commanded at time_s (None for a robot without a base group)."""
    group = config.base_group
    if group is None:
        return None
    _check_layout(trajectory, config)
    values = trajectory.sample(time_s)[list(config.action_indices(group))]
    return _twist(group, time_s, values)


def base_twist_samples(trajectory: Trajectory, config: RobotConfig, rate_hz: float | None = None,
                       from_time_s: float | None = None) -> list[TwistCommand]:
    """Twist samples at rate_hz (default: control_rate_hz) from from_time_s (default: the
    trajectory start) to its last step. Empty for a robot without a base group."""
    group = config.base_group
    if group is None:
        return []
    _check_layout(trajectory, config)
    rate_hz = config.control_rate_hz if rate_hz is None else rate_hz
    start = trajectory.start_time_s if from_time_s is None else from_time_s
    count = int(np.floor((trajectory.end_time_s - start) * rate_hz + 1e-9)) + 1
    if count <= 0:
        return []
    times = start + np.arange(count) / rate_hz
    values = trajectory.sample(times)[:, list(config.action_indices(group))]
    return [_twist(group, float(t), v) for t, v in zip(times, values)]


def _twist(group: ActionGroupConfig, time_s: float, values: np.ndarray) -> TwistCommand:
    return TwistCommand(group.name, time_s,
                        **{_TWIST_FIELD[d]: float(v) for d, v in zip(group.dims, values)})


def _check_layout(trajectory: Trajectory, config: RobotConfig) -> None:
    if trajectory.action_names != config.action_names:
        raise ValueError(f"trajectory actions {list(trajectory.action_names)} do not match "
                         f"robot '{config.name}' actions {list(config.action_names)}")
