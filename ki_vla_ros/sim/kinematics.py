"""Where each simulated arm's gripper is on the table: a planar two-link map, and its inverse.

The sim does not model a real arm. It needs a joints -> gripper position map that is
simple, deterministic and invertible, so that a scripted expert can produce joint-space
demonstrations and a policy must learn a real relation between joints and images.
Every arm (an action group of kind joint_trajectory with at least two joints) is a
two-link arm lying in the table plane, driven by the group's first two joints:

    shoulder_rad = q[group.joints[0]]      (panda_joint1, left_waist, ...)
    elbow_rad    = q[group.joints[1]]      (panda_joint2, left_shoulder, ...)
    elbow_xy     = mount_xy + UPPER_LINK_M * heading(mount_yaw + shoulder_rad)
    gripper_xy   = elbow_xy + FOREARM_M    * heading(mount_yaw + shoulder_rad + elbow_rad)

The arm's other joints do not move the gripper; they are still commanded, limited and
reported. A single-joint group is a gripper: its opening is drawn, nothing else.

Frames: the robot base frame has x forward, y to the robot's left, metres. One arm is
mounted at the base origin; arms whose group name says "left"/"right" sit at
y = +/-ARM_SPACING_M / 2; any other set of arms is spread evenly along y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ki_vla_ros.runtime.config import RobotConfig

UPPER_LINK_M = 0.30
FOREARM_M = 0.30
ARM_SPACING_M = 0.50


@dataclass(frozen=True)
class Pose2D:
    """A planar pose (x, y in metres, yaw in rad); maps its local frame into its parent."""

    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0

    def to_parent(self, xy_local: np.ndarray) -> np.ndarray:
        """[..., 2] local points -> [..., 2] parent-frame points."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        rotation = np.array([[c, s], [-s, c]])  # row-vector form of R(yaw)
        return np.asarray(xy_local, dtype=np.float64) @ rotation + (self.x, self.y)

    def to_local(self, xy_parent: np.ndarray) -> np.ndarray:
        """[..., 2] parent-frame points -> [..., 2] points in this pose's frame."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        rotation = np.array([[c, -s], [s, c]])  # row-vector form of R(-yaw)
        return (np.asarray(xy_parent, dtype=np.float64) - (self.x, self.y)) @ rotation


def _heading(angle_rad: float) -> np.ndarray:
    return np.array([math.cos(angle_rad), math.sin(angle_rad)])


@dataclass(frozen=True)
class ArmGeometry:
    """One arm: which joints move its gripper, where it is mounted, its joint limits."""

    name: str  # the action group's name, e.g. "arm", "left_arm"
    shoulder_joint: str
    elbow_joint: str
    gripper_joint: str | None
    mount: Pose2D  # in the robot base frame
    shoulder_limits_rad: tuple[float, float]
    elbow_limits_rad: tuple[float, float]
    upper_link_m: float = UPPER_LINK_M
    forearm_m: float = FOREARM_M

    def forward(self, shoulder_rad: float, elbow_rad: float) -> tuple[np.ndarray, np.ndarray]:
        """Joint angles -> (elbow_xy, gripper_xy) in the robot base frame."""
        elbow_local = self.upper_link_m * _heading(shoulder_rad)
        gripper_local = elbow_local + self.forearm_m * _heading(shoulder_rad + elbow_rad)
        return self.mount.to_parent(elbow_local), self.mount.to_parent(gripper_local)

    @property
    def reach_range_m(self) -> tuple[float, float]:
        """Closest and farthest gripper distance from the mount that the elbow limits allow."""
        lo, hi = self.elbow_limits_rad
        straightest = 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))
        most_bent = min(max(abs(lo), abs(hi)), math.pi)
        return self._reach_at(most_bent), self._reach_at(straightest)

    def _reach_at(self, elbow_rad: float) -> float:
        a, b = self.upper_link_m, self.forearm_m
        return math.sqrt(max(a * a + b * b + 2 * a * b * math.cos(elbow_rad), 0.0))

    def can_reach(self, xy_base: np.ndarray, margin_m: float = 0.0) -> bool:
        """True when an IK solution inside the joint limits puts the gripper at xy_base."""
        r_min, r_max = self.reach_range_m
        r = float(np.linalg.norm(self.mount.to_local(xy_base)))
        if not (r_min + margin_m <= r <= r_max - margin_m):
            return False
        solution = self.inverse(xy_base)
        return bool(np.linalg.norm(self.forward(*solution)[1] - xy_base) < 1e-6)

    def inverse(self, xy_base: np.ndarray, near: tuple[float, float] | None = None
                ) -> tuple[float, float]:
        """(shoulder_rad, elbow_rad) that put the gripper closest to xy_base.

        Of the two elbow branches inside the limits, the one nearest `near` (the current
        joints) wins, so a streamed target never makes the arm flip; without `near`, the
        one with more margin to the limits. An unreachable target is pulled onto the
        edge of the reachable ring.
        """
        local = self.mount.to_local(xy_base)
        r_min, r_max = self.reach_range_m
        r = min(max(float(np.linalg.norm(local)), r_min), r_max)
        bearing = math.atan2(local[1], local[0])
        a, b = self.upper_link_m, self.forearm_m
        cos_elbow = (r * r - a * a - b * b) / (2 * a * b)
        elbow = math.acos(min(max(cos_elbow, -1.0), 1.0))
        candidates = []
        for e in (elbow, -elbow):
            s = bearing - math.atan2(b * math.sin(e), a + b * math.cos(e))
            s = math.atan2(math.sin(s), math.cos(s))
            candidates.append((s, e))
        feasible = [c for c in candidates if self._within_limits(*c)] or candidates
        if near is not None:
            key = lambda c: abs(c[0] - near[0]) + abs(c[1] - near[1])  # noqa: E731
        else:
            key = lambda c: -self._limit_margin(*c)  # noqa: E731
        shoulder, elbow = min(feasible, key=key)
        return (float(np.clip(shoulder, *self.shoulder_limits_rad)),
                float(np.clip(elbow, *self.elbow_limits_rad)))

    def _within_limits(self, shoulder: float, elbow: float, eps: float = 1e-9) -> bool:
        (s_lo, s_hi), (e_lo, e_hi) = self.shoulder_limits_rad, self.elbow_limits_rad
        return s_lo - eps <= shoulder <= s_hi + eps and e_lo - eps <= elbow <= e_hi + eps

    def _limit_margin(self, shoulder: float, elbow: float) -> float:
        (s_lo, s_hi), (e_lo, e_hi) = self.shoulder_limits_rad, self.elbow_limits_rad
        return min(shoulder - s_lo, s_hi - shoulder, elbow - e_lo, e_hi - elbow)


def _side(name: str) -> str:
    return "left" if "left" in name else "right" if "right" in name else ""


def arm_layout(config: RobotConfig) -> tuple[ArmGeometry, ...]:
    """The arms of an embodiment, in config order (see the module docstring for the rules)."""
    groups = [g for g in config.action_groups if g.kind == "joint_trajectory"]
    arm_groups = [g for g in groups if len(g.joints) >= 2]
    gripper_groups = [g for g in groups if len(g.joints) == 1]
    sides = [_side(g.name) for g in arm_groups]
    if len(arm_groups) == 1:
        mounts_y = [0.0]
    elif all(sides) and len(set(sides)) == len(sides):
        mounts_y = [ARM_SPACING_M / 2 if s == "left" else -ARM_SPACING_M / 2 for s in sides]
    else:
        n = len(arm_groups)
        mounts_y = [ARM_SPACING_M * ((n - 1) / 2 - i) for i in range(n)]
    arms = []
    for group, side, mount_y in zip(arm_groups, sides, mounts_y):
        gripper = next((g.joints[0] for g in gripper_groups
                        if _side(g.name) == side or len(arm_groups) == 1), None)
        shoulder, elbow = group.joints[0], group.joints[1]
        limits = config.joint_limits
        arms.append(ArmGeometry(
            name=group.name, shoulder_joint=shoulder, elbow_joint=elbow, gripper_joint=gripper,
            mount=Pose2D(0.0, mount_y, 0.0),
            shoulder_limits_rad=(limits[shoulder].lower, limits[shoulder].upper),
            elbow_limits_rad=(limits[elbow].lower, limits[elbow].upper)))
    return tuple(arms)
