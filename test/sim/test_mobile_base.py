"""A mobile base integrates commanded twists within its limits and stops on timeout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim.kinematics import Pose2D
from ki_vla_ros.sim.robot import SimRobot


@pytest.fixture(scope="module")
def config():
    return load_robot_config("mobile")  # base: max_velocity [0.5, 0.5, 1.0], max_acc [1, 1, 2]


def stream(robot: SimRobot, twist: tuple[float, float, float], until_s: float, period_s: float = 0.02):
    """Send the twist every period (as the policy node streams it) until until_s."""
    while robot.time_s < until_s - 1e-9:
        robot.command_twist(*twist, stamp_s=robot.time_s)
        robot.step(robot.time_s + period_s)


def test_forward_twist_moves_the_base_by_the_integrated_distance(config):
    robot = SimRobot(config, seed=0)
    stream(robot, (0.2, 0.0, 0.0), 1.0)
    x, y, yaw, vx, vy, wz = robot.odometry()
    # 0.2 s ramp at 1 m/s^2 to 0.2 m/s, then cruise: 0.2 * 1.0 - 0.5 * 0.2 * 0.2 = 0.18 m.
    assert x == pytest.approx(0.18, abs=0.005)
    assert (y, yaw) == (pytest.approx(0.0, abs=1e-12), pytest.approx(0.0, abs=1e-12))
    assert (vx, vy, wz) == (pytest.approx(0.2), 0.0, 0.0)


def test_base_frame_velocity_is_rotated_by_the_heading(config):
    robot = SimRobot(config, seed=0, base_pose=Pose2D(1.0, 2.0, math.pi / 2))
    stream(robot, (0.0, 0.3, 0.0), 1.0)  # leftward in the base frame = -x in the world
    x, y, yaw, *_ = robot.odometry()
    assert x == pytest.approx(1.0 - (0.3 - 0.5 * 0.3 * 0.3), abs=0.005)
    assert y == pytest.approx(2.0, abs=1e-9) and yaw == pytest.approx(math.pi / 2)


def test_turning_integrates_the_heading(config):
    robot = SimRobot(config, seed=0)
    stream(robot, (0.0, 0.0, 0.5), 2.25)
    *_, yaw, _, _, wz = robot.odometry()
    assert wz == pytest.approx(0.5)
    assert yaw == pytest.approx(0.5 * 2.25 - 0.5 * 0.5 * 0.25, abs=0.01)


def test_commands_are_clipped_to_max_velocity_and_ramped_by_max_acceleration(config):
    robot = SimRobot(config, seed=0)
    robot.command_twist(3.0, -3.0, 9.0, stamp_s=0.0)
    robot.step(0.1)
    _, _, _, vx, vy, wz = robot.odometry()
    assert (vx, vy, wz) == (pytest.approx(0.1), pytest.approx(-0.1), pytest.approx(0.2))
    stream(robot, (3.0, -3.0, 9.0), 2.0)
    _, _, _, vx, vy, wz = robot.odometry()
    assert (vx, vy, wz) == (pytest.approx(0.5), pytest.approx(-0.5), pytest.approx(1.0))


def test_a_silent_command_stream_times_out_and_the_base_stops(config):
    robot = SimRobot(config, seed=0, twist_timeout_s=0.5)
    robot.command_twist(0.4, 0.0, 0.0, stamp_s=0.0)
    robot.step(0.5)  # still in force at the timeout
    assert robot.odometry()[3] == pytest.approx(0.4)
    robot.step(0.6)  # past the timeout: decelerating at max_acceleration
    assert 0.0 < robot.odometry()[3] < 0.4
    robot.step(1.2)
    x_stopped = robot.odometry()[0]
    assert robot.odometry()[3:] == (0.0, 0.0, 0.0)
    robot.step(3.0)
    assert robot.odometry()[0] == x_stopped


def test_the_state_vector_carries_base_velocities_in_config_order(config):
    robot = SimRobot(config, seed=0)
    stream(robot, (0.2, -0.1, 0.3), 1.0)
    state = robot.state_vector()
    assert state.shape == (config.state_dim,) and state.dtype == np.float32
    assert config.state_names[-3:] == ("base_vx", "base_vy", "base_wz")
    np.testing.assert_allclose(state[-3:], [0.2, -0.1, 0.3], atol=1e-6)
