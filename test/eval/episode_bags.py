"""Simulated episodes with known commands, written as rosbag2 bags by `rosbags`.

The commanded trajectory is a known function of time (`commanded_actions`). Every
`command_period_s` it is sent, as a JointTrajectory per action group, both into the bag
(on the group's controller_topic) and to a SimRobot (ki_vla_ros.sim), whose joints follow
it within their velocity limits; the bag gets the sim's joint states and camera images.
So an oracle that evaluates `commanded_actions` knows the recorded future exactly, and
`Episode.measured` holds the joint states for the measured-target case.
All times are whole multiples of 10 ms, so observation stamps fall on the command grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ki_vla_ros.eval.bag_io import (
    COMPRESSED_IMAGE, IMAGE, JOINT_STATE, JOINT_TRAJECTORY, STRING, BagWriter, make_compressed_image,
    make_image, make_joint_state, make_joint_trajectory, make_string)
from ki_vla_ros.runtime.topics import INSTRUCTION_TOPIC
from ki_vla_ros.runtime.config import RobotConfig, load_robot_config
from ki_vla_ros.sim import SimRobot

CONFIG_PATH = Path(__file__).resolve().parent / "test_arm.yaml"
TICK_NS = 10_000_000  # every time in an episode is a multiple of 10 ms


def arm_config() -> RobotConfig:
    return load_robot_config(CONFIG_PATH)


COMMAND_GRID_S = 0.1  # commands are knots on this absolute-time grid, linear in between


def commanded_actions(config: RobotConfig, times_s, still_joints=()) -> np.ndarray:
    """The commanded joint positions [T, D] at any absolute time: a slow sine per joint
    inside its limits (still_joints: held at the middle of their limits), sampled on the
    COMMAND_GRID_S grid and linear in between, so trajectories whose points lie on that grid
    reproduce it exactly at every instant."""
    times_s = np.asarray(times_s, dtype=np.float64)
    knot = np.floor(times_s / COMMAND_GRID_S)
    frac = (times_s / COMMAND_GRID_S - knot)[:, None]
    return ((1 - frac) * _sine(config, knot * COMMAND_GRID_S, still_joints)
            + frac * _sine(config, (knot + 1) * COMMAND_GRID_S, still_joints))


def _sine(config: RobotConfig, times_s: np.ndarray, still_joints=()) -> np.ndarray:
    t = times_s[:, None]
    lower = np.array([config.joint_limits[j].lower for j in config.joints])
    upper = np.array([config.joint_limits[j].upper for j in config.joints])
    dims = np.arange(len(config.joints))
    amplitude = 0.2 * np.array([0.0 if j in still_joints else 1.0 for j in config.joints])
    return (lower + upper) / 2 + amplitude * (upper - lower) * np.sin(2 * np.pi * (0.3 + 0.1 * dims) * t + 0.7 * dims)


@dataclass(frozen=True)
class Episode:
    path: Path
    measured_times_s: np.ndarray  # [N] joint state stamps
    measured: np.ndarray  # [N, num_joints] joint state positions (config order)

    def measured_actions(self, times_s) -> np.ndarray:
        """Measured positions at times_s [T] -> [T, D], linear between joint states."""
        times_s = np.asarray(times_s, dtype=np.float64)
        return np.stack([np.interp(times_s, self.measured_times_s, self.measured[:, d])
                         for d in range(self.measured.shape[1])], axis=1)


def write_episode_bag(path, config: RobotConfig | None = None, storage: str = "mcap", *,
                      start_s: float = 1000.0, duration_s: float = 2.0, camera_hz: float = 10.0,
                      joint_hz: float = 50.0, command_period_s: float = 0.5, commands: bool = True,
                      joint_names=None, command_joint_names=None, drop_topics=(),
                      instruction: str | None = "wave the arm", still_joints=(), stamp_offsets_s=None,
                      raw_encoding: str = "rgb8") -> Episode:
    """Simulate and write one episode. Commands reach a horizon past the end of the bag,
    so every chunk of the episode has a recorded target at each of its steps.
    stamp_offsets_s: {camera topic: seconds added to its header stamps} (a driver's wrong clock);
    raw_encoding: the encoding raw images claim to have (their bytes stay rgb8)."""
    stamp_offsets_s = stamp_offsets_s or {}
    config = config or arm_config()
    dt = config.chunk.step_duration_s
    steps = config.chunk.horizon_steps + int(round(command_period_s / dt)) + 1
    joint_names = list(joint_names or config.joints)
    start_ns = int(round(start_s * 1e9))
    ticks = int(round(duration_s * 1e9 / TICK_NS))

    def due(period_s: float, tick: int) -> bool:
        return tick % int(round(period_s * 1e9 / TICK_NS)) == 0

    robot = SimRobot(config, seed=0, start_time_s=start_s)
    measured_times, measured = [], []
    with BagWriter(path, storage) as writer:
        store = writer.typestore
        types = {config.joint_states_topic: JOINT_STATE}
        types.update({c.topic: IMAGE if c.message_type == "raw" else COMPRESSED_IMAGE for c in config.cameras})
        if commands:
            types.update({g.controller_topic: JOINT_TRAJECTORY for g in config.action_groups})
        if instruction is not None:
            types[INSTRUCTION_TOPIC] = STRING
        for topic, msgtype in types.items():
            if topic not in drop_topics:
                writer.add_topic(topic, msgtype)

        def write(topic, t_ns, msg):
            if topic not in drop_topics:
                writer.write(topic, t_ns, msg)

        if instruction is not None:
            write(INSTRUCTION_TOPIC, start_ns, make_string(store, instruction))
        for tick in range(ticks + 1):
            t_ns = start_ns + tick * TICK_NS
            t_s = t_ns * 1e-9
            robot.step(t_s)
            if due(1.0 / joint_hz, tick):
                names, positions, _ = robot.joint_state()
                measured_times.append(t_s)
                measured.append(positions)
                by_name = dict(zip(names, positions))
                write(config.joint_states_topic, t_ns, make_joint_state(
                    store, t_s, joint_names, [by_name.get(n, 0.0) for n in joint_names]))
            if due(1.0 / camera_hz, tick):
                images = robot.images()
                for camera in config.cameras:
                    rgb = images[camera.name]
                    stamp_s = t_s + stamp_offsets_s.get(camera.topic, 0.0)
                    if camera.message_type == "raw":
                        msg = make_image(store, stamp_s, rgb)
                        msg.encoding = raw_encoding
                    else:
                        msg = make_compressed_image(store, stamp_s, rgb)
                    write(camera.topic, t_ns, msg)
            if commands and due(command_period_s, tick):
                plan = commanded_actions(config, t_s + dt * np.arange(steps), still_joints)
                for group in config.action_groups:
                    positions = plan[:, [config.joints.index(j) for j in group.joints]]
                    names = list(command_joint_names or group.joints) if group.name == "arm" \
                        else list(group.joints)
                    write(group.controller_topic, t_ns,
                          make_joint_trajectory(store, t_s, names, positions, dt))
                    robot.command_trajectory(group.name, t_s,
                                             [(k * dt, row, ()) for k, row in enumerate(positions)])
    return Episode(Path(path), np.asarray(measured_times), np.asarray(measured))
