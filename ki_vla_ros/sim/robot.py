"""SimRobot: a simulated embodiment that takes controller commands and reports its state.

It stands in for ros2_control plus cameras, driven by the same RobotConfig as the real
robot: each joint_trajectory action group behaves like a joint_trajectory_controller
(sim/trajectory.py), a base_twist group like a velocity-commanded base (sim/base.py),
and each configured camera renders the table scene (sim/render.py). The state advances
in fixed controller ticks of 1 / control_rate_hz; per tick every joint moves toward its
desired position by at most max_velocity * dt and stays inside [lower, upper].

Time is whatever clock the caller uses (ROS time, or seconds from 0 in a script): the
robot never reads a clock; `step(now_s)` runs the ticks up to now_s.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ki_vla_ros.runtime.config import BASE_TWIST_DIMS, RobotConfig
from ki_vla_ros.sim.base import HolonomicBase
from ki_vla_ros.sim.cameras import SimCamera, sim_cameras
from ki_vla_ros.sim.kinematics import ArmGeometry, Pose2D, arm_layout
from ki_vla_ros.sim.render import ArmDrawing, overview_view, render_top_down, wrist_view
from ki_vla_ros.sim.scene import Scene
from ki_vla_ros.sim.trajectory import ActiveTrajectory, build_trajectory

HOME_REACH_M = 0.45  # the home pose puts each gripper this far straight ahead of its mount
REACH_MARGIN_M = 0.03  # blocks are placed at least this far inside an arm's reach
CLEAR_OF_HOME_M = 0.10  # ... and this far from a gripper's home position: no trivial reach
REACH_TOLERANCE_M = 0.03  # gripper centre within this of a block centre = reached


def home_positions(config: RobotConfig, arms: Sequence[ArmGeometry]) -> dict[str, float]:
    """The default start pose: grippers open, each arm reaching HOME_REACH_M straight
    ahead (see kinematics), every other joint at 0, or mid-range when 0 is outside its
    limits (panda_joint4), so that every joint can move both ways from home."""
    home = {}
    for joint in config.joints:
        lim = config.joint_limits[joint]
        home[joint] = 0.0 if lim.lower <= 0.0 <= lim.upper else (lim.lower + lim.upper) / 2
    for arm in arms:
        ahead = arm.mount.to_parent(np.array([HOME_REACH_M, 0.0]))
        home[arm.shoulder_joint], home[arm.elbow_joint] = arm.inverse(ahead)
        if arm.gripper_joint is not None:
            home[arm.gripper_joint] = config.joint_limits[arm.gripper_joint].upper
    return home


class SimRobot:
    def __init__(self, config: RobotConfig, seed: int = 0, *, scene: Scene | None = None,
                 num_objects: int | None = None, home: Mapping[str, float] | None = None,
                 start_time_s: float = 0.0, base_pose: Pose2D = Pose2D(),
                 twist_timeout_s: float = 0.5, control_rate_hz: float | None = None,
                 image_size_px: tuple[int, int] | None = None, max_image_side_px: int | None = None):
        """seed draws the scene (2-4 blocks unless num_objects) when none is given.

        home: joint positions overriding the default home pose (must be inside limits).
        image_size_px / max_image_side_px: see sim/cameras.py (default: config sizes).
        """
        self.config = config
        self.arms = arm_layout(config)
        self.joint_names = config.joints
        limits = [config.joint_limits[j] for j in config.joints]
        self._lower = np.array([lim.lower for lim in limits])
        self._upper = np.array([lim.upper for lim in limits])
        self._max_velocity = np.array([lim.max_velocity for lim in limits])
        start = home_positions(config, self.arms)
        for joint, value in (home or {}).items():
            lim = config.joint_limits.get(joint)
            if lim is None or not lim.lower <= value <= lim.upper:
                raise ValueError(f"home position {joint} = {value}; expected a joint of "
                                 f"{config.name} inside its limits ({lim})")
            start[joint] = float(value)
        self._home = dict(start)
        self._positions = np.array([start[j] for j in config.joints])
        self._velocities = np.zeros(len(config.joints))
        self._desired = self._positions.copy()
        self._trajectories: dict[str, ActiveTrajectory] = {}
        self._index = {j: i for i, j in enumerate(config.joints)}
        self.control_rate_hz = float(control_rate_hz or config.control_rate_hz)
        self._start_time_s = float(start_time_s)
        self._ticks = 0
        group = config.base_group
        self.base = HolonomicBase(group, base_pose, twist_timeout_s) if group else None
        self._fixed_pose = base_pose
        if scene is None:
            rng = np.random.default_rng(seed)
            count = int(rng.integers(2, 5)) if num_objects is None else num_objects
            scene = Scene.sample(rng, count, is_placeable=self.is_placeable)
        self.scene = scene
        self.cameras: tuple[SimCamera, ...] = sim_cameras(
            config, [a.name for a in self.arms], image_size_px, max_image_side_px)

    # ------------------------------------------------------------------ commands

    @property
    def time_s(self) -> float:
        """Time of the last controller tick (the time the reported state is for)."""
        return self._start_time_s + self._ticks / self.control_rate_hz

    @property
    def home(self) -> dict[str, float]:
        return dict(self._home)

    def command_trajectory(self, group_name: str, start_time_s: float, points: Sequence[Any],
                           joint_names: Sequence[str] | None = None) -> int:
        """Replace the group's trajectory (joint_trajectory_controller semantics, see
        sim/trajectory.py). points: (time_from_start_s, positions, velocities) tuples or
        runtime.commands.TrajectoryPoint. Returns the number of points kept; 0 means
        rejected (all in the past, previous trajectory still active) or, for an empty
        list, motion cancelled and the group holding its current position."""
        group = self.config.action_group(group_name)
        if group.kind != "joint_trajectory":
            raise ValueError(f"group '{group_name}' of {self.config.name} is {group.kind}; "
                             "expected a joint_trajectory group (use command_twist)")
        idx = [self._index[j] for j in group.joints]
        if len(points) == 0:
            self._trajectories.pop(group_name, None)
            self._desired[idx] = self._positions[idx]
            return 0
        trajectory = build_trajectory(group_name, group.joints, self.time_s,
                                      self._positions[idx], start_time_s, points, joint_names)
        if trajectory is None:
            return 0
        self._trajectories[group_name] = trajectory
        return len(trajectory.times_s) - 1

    def command_twist(self, vx: float, vy: float, wz: float, stamp_s: float) -> None:
        """Base velocity (base frame: m/s, m/s, rad/s), in force until timeout after stamp_s."""
        if self.base is None:
            raise ValueError(f"{self.config.name} has no base_twist action group; "
                             "command_twist needs a mobile base")
        self.base.command(vx, vy, wz, stamp_s)

    def apply_action(self, action: np.ndarray, now_s: float, step_duration_s: float) -> None:
        """One action vector (config.action_names layout) as controller commands: joints
        are position targets due at now_s + step_duration_s, base dims a twist from now_s."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.config.action_dim,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action = {action.tolist()}; expected {self.config.action_dim} "
                             f"finite values {list(self.config.action_names)}")
        for group in self.config.action_groups:
            values = action[list(self.config.action_indices(group))]
            if group.kind == "joint_trajectory":
                self.command_trajectory(group.name, now_s, [(step_duration_s, values, ())])
            else:
                twist = dict(zip(group.dims, values))
                self.command_twist(*(float(twist.get(d, 0.0)) for d in BASE_TWIST_DIMS), now_s)

    # ------------------------------------------------------------------ simulation

    def step(self, now_s: float) -> int:
        """Run the controller ticks up to now_s; returns how many ran."""
        if now_s < self.time_s - 1e-9:
            raise ValueError(f"step(now_s={now_s}) is before the robot's time {self.time_s}; "
                             "time must not go backwards (recreate the robot after a clock jump)")
        target = math.floor((now_s - self._start_time_s) * self.control_rate_hz + 1e-6)
        count = max(0, target - self._ticks)
        for _ in range(count):
            self._tick()
        return count

    def _tick(self) -> None:
        dt = 1.0 / self.control_rate_hz
        self._ticks += 1
        now = self.time_s
        for name, trajectory in self._trajectories.items():
            idx = [self._index[j] for j in self.config.action_group(name).joints]
            self._desired[idx] = trajectory.sample(now)
        desired = np.clip(self._desired, self._lower, self._upper)
        max_step = self._max_velocity * dt
        new = np.clip(self._positions + np.clip(desired - self._positions, -max_step, max_step),
                      self._lower, self._upper)
        self._velocities = (new - self._positions) / dt
        self._positions = new
        if self.base is not None:
            self.base.tick(now, dt)

    # ------------------------------------------------------------------ state

    def joint_state(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        """(names, positions, velocities) in config joint order, like sensor_msgs/JointState."""
        return self.joint_names, self._positions.copy(), self._velocities.copy()

    def joint_positions(self) -> dict[str, float]:
        return {j: float(p) for j, p in zip(self.joint_names, self._positions)}

    @property
    def base_pose(self) -> Pose2D:
        return self.base.pose if self.base is not None else self._fixed_pose

    def odometry(self) -> tuple[float, float, float, float, float, float]:
        """(x, y, yaw, vx, vy, wz): pose in the world, velocity in the base frame
        (nav_msgs/Odometry twist convention). A fixed base reports zero velocity."""
        pose = self.base_pose
        velocity = self.base.velocity if self.base is not None else np.zeros(3)
        return (pose.x, pose.y, pose.yaw, *map(float, velocity))

    def state_vector(self) -> np.ndarray:
        """float32 [state_dim] in config.state_names order (positions, then base velocity)."""
        values = dict(zip(self.joint_names, self._positions))
        if self.base is not None:
            for i, dim in enumerate(BASE_TWIST_DIMS):
                values[f"{self.base.group.name}_{dim}"] = self.base.velocity[i]
        return np.array([values[n] for n in self.config.state_names], dtype=np.float32)

    def arm_drawings(self) -> tuple[ArmDrawing, ...]:
        """Each arm's mount, elbow and gripper in the world frame, and its gripper opening."""
        pose, drawings = self.base_pose, []
        for arm in self.arms:
            elbow, gripper = arm.forward(self._positions[self._index[arm.shoulder_joint]],
                                         self._positions[self._index[arm.elbow_joint]])
            opening = 1.0
            if arm.gripper_joint is not None:
                i = self._index[arm.gripper_joint]
                opening = (self._positions[i] - self._lower[i]) / (self._upper[i] - self._lower[i])
            drawings.append(ArmDrawing(pose.to_parent(arm.mount.to_parent(np.zeros(2))),
                                       pose.to_parent(elbow), pose.to_parent(gripper), float(opening)))
        return tuple(drawings)

    def end_effector_positions(self) -> dict[str, np.ndarray]:
        """Arm name -> gripper (x, y) in the world frame (m)."""
        return {arm.name: d.gripper_xy_m for arm, d in zip(self.arms, self.arm_drawings())}

    def distance_to(self, object_name: str) -> float:
        """Planar distance (m) from the nearest gripper to the named block's centre."""
        target = self.scene.object(object_name).xy
        return min(float(np.linalg.norm(p - target)) for p in self.end_effector_positions().values())

    def reached(self, object_name: str, tolerance_m: float = REACH_TOLERANCE_M) -> bool:
        return self.distance_to(object_name) <= tolerance_m

    def is_placeable(self, xy_world: np.ndarray) -> bool:
        """Where a block may go: inside some arm's reach and clear of every gripper's home
        position, for a base at the world origin (where a mobile base parks at the table)."""
        xy_base = np.asarray(xy_world, dtype=np.float64)
        for arm in self.arms:
            home_xy = arm.forward(self._home[arm.shoulder_joint], self._home[arm.elbow_joint])[1]
            if np.linalg.norm(xy_base - home_xy) < CLEAR_OF_HOME_M:
                return False
        return any(arm.can_reach(xy_base, REACH_MARGIN_M) for arm in self.arms)

    # ------------------------------------------------------------------ cameras

    def images(self, now_s: float | None = None) -> dict[str, np.ndarray]:
        """Camera name -> uint8 [H, W, 3] RGB of the current state; with now_s, the robot
        first steps to now_s so images and joint states describe the same instant."""
        if now_s is not None:
            self.step(now_s)
        arms = self.arm_drawings()
        by_arm = {arm.name: d for arm, d in zip(self.arms, arms)}
        images = {}
        for camera in self.cameras:
            if camera.kind == "wrist":
                view = wrist_view(by_arm[camera.arm], camera.width_px, camera.height_px)
            else:
                view = overview_view(self.base_pose, camera.width_px, camera.height_px)
            images[camera.name] = render_top_down(view, self.scene, arms)
        return images
