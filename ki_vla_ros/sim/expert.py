"""The scripted reach expert: joint-space actions that bring a gripper onto a named block.

It plays the demonstrator for synthetic training data. Each step it looks at the
measured joints (not at its own previous command, so it also recovers from a policy's
mistakes when used for DAgger-style relabelling):
  - the arm that can reach the block from the parking pose, nearest mount first, moves
    its gripper along a straight line toward the block at up to EXPERT_SPEED_M_S,
    turned into joints by the planar IK of sim/kinematics.py (the elbow branch nearest
    the current joints, so the arm never flips), each joint within VELOCITY_FRACTION of
    its max_velocity;
  - every other joint holds its home position; grippers stay open;
  - a mobile base drives back to the parking pose (the world origin, where every block
    is reachable) with a proportional velocity command within its limits.
"""

from __future__ import annotations

import math

import numpy as np

from ki_vla_ros.runtime.config import BASE_TWIST_DIMS
from ki_vla_ros.sim.kinematics import ArmGeometry, Pose2D
from ki_vla_ros.sim.robot import SimRobot

EXPERT_SPEED_M_S = 0.35
VELOCITY_FRACTION = 0.9
BASE_GAIN_PER_S = 2.0
PARKING_POSE = Pose2D()


def choose_arm(arms: tuple[ArmGeometry, ...], target_xy_base: np.ndarray) -> ArmGeometry:
    """The arm to reach with: one that can reach the target, nearest mount first."""
    def mount_distance(arm: ArmGeometry) -> float:
        return float(np.linalg.norm(arm.mount.to_parent(np.zeros(2)) - target_xy_base))
    reachable = [a for a in arms if a.can_reach(target_xy_base)]
    return min(reachable or arms, key=mount_distance)


class ReachExpert:
    def __init__(self, robot: SimRobot, target_name: str):
        self.robot = robot
        self.target_xy_m = robot.scene.object(target_name).xy
        self.arm = choose_arm(robot.arms, PARKING_POSE.to_local(self.target_xy_m))
        config = robot.config
        self._max_velocity = {j: config.joint_limits[j].max_velocity for j in config.joints}

    def action(self, step_duration_s: float) -> np.ndarray:
        """float32 [action_dim] in config.action_names order for the next step."""
        config, robot = self.robot.config, self.robot
        targets = dict(robot.home)
        current = robot.joint_positions()
        shoulder, elbow = self._arm_step(current, step_duration_s)
        targets[self.arm.shoulder_joint], targets[self.arm.elbow_joint] = shoulder, elbow
        values = [targets[j] for j in config.joints]
        if robot.base is not None:
            twist = dict(zip(BASE_TWIST_DIMS, self._base_twist()))
            values += [twist[d] for d in robot.base.group.dims]
        return np.array(values, dtype=np.float32)

    def _arm_step(self, current: dict[str, float], dt_s: float) -> tuple[float, float]:
        arm = self.arm
        now = (current[arm.shoulder_joint], current[arm.elbow_joint])
        gripper = arm.forward(*now)[1]
        target = self.robot.base_pose.to_local(self.target_xy_m)
        offset = target - gripper
        distance = float(np.linalg.norm(offset))
        step = min(distance, EXPERT_SPEED_M_S * dt_s)
        waypoint = gripper + (offset / distance * step if distance > 0 else 0.0)
        goal = arm.inverse(waypoint, near=now)
        result = []
        for joint, q_now, q_goal in zip((arm.shoulder_joint, arm.elbow_joint), now, goal):
            max_step = VELOCITY_FRACTION * self._max_velocity[joint] * dt_s
            result.append(float(q_now + np.clip(q_goal - q_now, -max_step, max_step)))
        return result[0], result[1]

    def _base_twist(self) -> np.ndarray:
        """(vx, vy, wz) in the base frame toward PARKING_POSE, within max_velocity."""
        pose, group = self.robot.base_pose, self.robot.base.group
        ahead = pose.to_local(np.array([PARKING_POSE.x, PARKING_POSE.y]))
        yaw_error = math.atan2(math.sin(PARKING_POSE.yaw - pose.yaw),
                               math.cos(PARKING_POSE.yaw - pose.yaw))
        command = BASE_GAIN_PER_S * np.array([ahead[0], ahead[1], yaw_error])
        limits = dict(zip(group.dims, group.max_velocity))
        bound = np.array([VELOCITY_FRACTION * limits.get(d, 0.0) for d in BASE_TWIST_DIMS])
        return np.clip(command, -bound, bound)
