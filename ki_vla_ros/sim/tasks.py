"""The language-conditioned reach task: instructions, episode setup, expert demonstrations.

One seed fixes everything about an episode (scene, target, instruction wording, a mobile
base's start pose), so closed-loop evaluation of a policy on seed s faces exactly the
scene the expert demonstrated on seed s. `start_reach_episode` is shared by demonstration
generation and evaluation for that reason.

Episode layout (`generate_episode`), T = steps, observations at t * step_duration_s:
    images[camera]  uint8 [T, H, W, 3]   RGB, before the action of step t
    state           float32 [T, state_dim]   config.state_names (joint positions, then
                                             base velocities for robots with odometry)
    actions         float32 [T, action_dim]  config.action_names: absolute joint position
                    targets the controller reaches at (t + 1) * step_duration_s, then base
                    velocity targets (vx, vy, wz) commanded from t * step_duration_s
    instruction, target, success (gripper within REACH_TOLERANCE_M of the target after
    the last step), final_distance_m, time_s [T], state_names, action_names,
    step_duration_s, vqa (question/answer pairs about the same scene)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ki_vla_ros.runtime.config import RobotConfig
from ki_vla_ros.sim.expert import ReachExpert
from ki_vla_ros.sim.kinematics import Pose2D
from ki_vla_ros.sim.robot import REACH_TOLERANCE_M, SimRobot
from ki_vla_ros.sim.scene import Scene
from ki_vla_ros.sim.vqa import vqa_samples

INSTRUCTION_TEMPLATES = (
    "move to the {target}",
    "reach the {target}",
    "go to the {target}",
    "touch the {target}",
    "move the gripper to the {target}",
)
EPISODE_DURATION_S = 3.0
# A mobile base starts somewhat off its parking pose, so demonstrations use the base.
MOBILE_START_X_M = (-0.15, 0.0)
MOBILE_START_Y_M = (-0.10, 0.10)
MOBILE_START_YAW_RAD = (-0.2, 0.2)
NOISE_STREAM = 1  # generate_episode's action noise: its own random stream per seed


@dataclass(frozen=True)
class ReachTask:
    target: str  # an object name, "red block"
    instruction: str

    @classmethod
    def sample(cls, scene: Scene, rng: np.random.Generator) -> "ReachTask":
        target = scene.objects[int(rng.integers(len(scene.objects)))].name
        template = INSTRUCTION_TEMPLATES[int(rng.integers(len(INSTRUCTION_TEMPLATES)))]
        return cls(target, template.format(target=target))

    def success(self, robot: SimRobot, tolerance_m: float = REACH_TOLERANCE_M) -> bool:
        return robot.reached(self.target, tolerance_m)


def controller_rate_hz(config: RobotConfig, step_duration_s: float) -> float:
    """The config's control rate, raised just enough that a step is a whole number of
    ticks, so every observation lands exactly on a controller tick."""
    ticks = max(1, math.ceil(step_duration_s * config.control_rate_hz - 1e-9))
    return ticks / step_duration_s


def start_reach_episode(config: RobotConfig, seed: int, step_duration_s: float | None = None,
                        image_size_px: tuple[int, int] | None = None,
                        max_image_side_px: int | None = None) -> tuple[SimRobot, ReachTask]:
    """A fresh robot in the seed's scene, with the seed's task, at time 0."""
    step_duration_s = step_duration_s or config.chunk.step_duration_s
    rng = np.random.default_rng(seed)
    base_pose = Pose2D()
    if config.base_group is not None:
        base_pose = Pose2D(rng.uniform(*MOBILE_START_X_M), rng.uniform(*MOBILE_START_Y_M),
                           rng.uniform(*MOBILE_START_YAW_RAD))
    robot = SimRobot(config, seed=int(rng.integers(2**31)), base_pose=base_pose,
                     control_rate_hz=controller_rate_hz(config, step_duration_s),
                     image_size_px=image_size_px, max_image_side_px=max_image_side_px)
    return robot, ReachTask.sample(robot.scene, rng)


# Drives a freshly started episode before the expert takes over; returns the time it stopped at.
LeadIn = Callable[[SimRobot, "ReachTask"], float]


def generate_episode(config: RobotConfig, seed: int, steps: int | None = None,
                     step_duration_s: float | None = None, *, max_image_side_px: int | None = 96,
                     image_size_px: tuple[int, int] | None = None, action_noise_rad: float = 0.0,
                     lead_in: LeadIn | None = None) -> dict[str, Any]:
    """One expert demonstration (layout in the module docstring).

    Defaults: step_duration_s = config.chunk.step_duration_s, steps = EPISODE_DURATION_S
    worth, images scaled so their longer side is 96 px (max_image_side_px=None keeps the
    config's camera sizes, which is what sim_robot publishes).

    action_noise_rad > 0: the robot executes the expert's action plus Gaussian noise of this
    standard deviation on the reaching arm's shoulder and elbow, while `actions` records the
    clean expert action, which corrects from wherever the noise put the arm (DART, Laskey
    et al., 2017). The demonstrations then show recoveries, and the arm's pose no longer
    gives the target away. The scene and the task are the seed's either way.

    lead_in(robot, task) -> time_s: something else (a policy being trained) drives the robot
    first, from time 0, and returns the time it stopped at; the expert then demonstrates from
    wherever that left the arm, and the episode's steps start there (time_s[0] = that time).
    These are DAgger's relabelled states (Ross et al., 2011): the states the policy visits,
    with the expert's actions from them.
    """
    if not (math.isfinite(action_noise_rad) and action_noise_rad >= 0):
        raise ValueError(f"action_noise_rad is {action_noise_rad}; expected a finite standard deviation >= 0")
    step_duration_s = step_duration_s or config.chunk.step_duration_s
    steps = steps or math.ceil(EPISODE_DURATION_S / step_duration_s)
    robot, task = start_reach_episode(config, seed, step_duration_s, image_size_px,
                                      max_image_side_px)
    start_s = float(lead_in(robot, task)) if lead_in is not None else 0.0
    expert = ReachExpert(robot, task.target)
    noisy = [config.action_names.index(j) for j in (expert.arm.shoulder_joint, expert.arm.elbow_joint)]
    noise_rng = np.random.default_rng([seed, NOISE_STREAM])  # apart from the scene's and task's draws
    images = {c.name: np.empty((steps, c.height_px, c.width_px, 3), np.uint8) for c in robot.cameras}
    state = np.empty((steps, config.state_dim), np.float32)
    actions = np.empty((steps, config.action_dim), np.float32)
    times = start_s + np.arange(steps) * step_duration_s
    for t, now in enumerate(times):
        for name, image in robot.images(float(now)).items():
            images[name][t] = image
        state[t] = robot.state_vector()
        actions[t] = expert.action(step_duration_s)
        executed = actions[t].astype(np.float64)
        if action_noise_rad:
            executed[noisy] += noise_rng.normal(0.0, action_noise_rad, len(noisy))  # the controller clips to the limits
        robot.apply_action(executed, float(now), step_duration_s)
    robot.step(start_s + steps * step_duration_s)
    return {
        "images": images,
        "state": state,
        "actions": actions,
        "instruction": task.instruction,
        "target": task.target,
        "success": task.success(robot),
        "final_distance_m": robot.distance_to(task.target),
        "time_s": times,
        "state_names": config.state_names,
        "action_names": config.action_names,
        "step_duration_s": step_duration_s,
        "vqa": vqa_samples(robot.scene),
    }
