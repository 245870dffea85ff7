"""SimRobot follows commanded trajectories like ros2_control's joint_trajectory_controller."""

from __future__ import annotations

import numpy as np
import pytest

from ki_vla_ros.runtime.commands import TrajectoryPoint
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim.robot import SimRobot

ARM = ["panda_joint1", "panda_joint2", "panda_joint3", "panda_joint4",
       "panda_joint5", "panda_joint6", "panda_joint7"]


@pytest.fixture(scope="module")
def config():
    return load_robot_config("single_arm")


def toward_middle(config, positions: np.ndarray, amount_rad: float) -> np.ndarray:
    """Offsets of amount_rad per arm joint, each pointing into its joint range."""
    middle = np.array([(config.joint_limits[j].lower + config.joint_limits[j].upper) / 2 for j in ARM])
    return np.where(middle >= positions, amount_rad, -amount_rad)


def arm_positions(robot: SimRobot) -> np.ndarray:
    names, positions, _ = robot.joint_state()
    return positions[[names.index(j) for j in ARM]]


def run(robot: SimRobot, until_s: float, record: list | None = None) -> None:
    """Step tick by tick, recording (time, positions, velocities) after each tick."""
    while robot.time_s < until_s - 1e-9:
        robot.step(robot.time_s + 1.0 / robot.control_rate_hz)
        if record is not None:
            _, q, v = robot.joint_state()
            record.append((robot.time_s, q, v))


def test_positions_reach_each_point_at_its_commanded_time(config):
    robot = SimRobot(config, seed=0)
    home = arm_positions(robot)
    inward = toward_middle(config, home, 1.0)
    first, second = home + 0.3 * inward, home + np.linspace(-0.2, 0.2, 7) * inward
    assert robot.command_trajectory("arm", 0.0, [(0.5, first, ()), (1.1, second, ())]) == 2
    run(robot, 0.5)  # ticks at 50 Hz land on 0.5, 0.8 and 1.1 s
    np.testing.assert_allclose(arm_positions(robot), first, atol=1e-9)
    run(robot, 0.8)
    np.testing.assert_allclose(arm_positions(robot), (first + second) / 2, atol=1e-9)
    run(robot, 1.1)
    np.testing.assert_allclose(arm_positions(robot), second, atol=1e-9)
    run(robot, 2.0)  # after the last point: hold
    np.testing.assert_allclose(arm_positions(robot), second, atol=1e-9)


def test_runtime_trajectory_points_and_message_joint_order_are_accepted(config):
    robot = SimRobot(config, seed=0)
    target = arm_positions(robot) + toward_middle(config, arm_positions(robot), 0.1)
    reordered = ARM[::-1]
    points = [TrajectoryPoint(0.5, tuple(target[::-1]), tuple([0.0] * 7))]
    robot.command_trajectory("arm", 0.0, points, joint_names=reordered)
    run(robot, 0.6)
    np.testing.assert_allclose(arm_positions(robot), target, atol=1e-9)


def test_velocity_and_position_limits_are_never_exceeded(config):
    robot = SimRobot(config, seed=0)
    names, _, _ = robot.joint_state()
    lower = np.array([config.joint_limits[j].lower for j in names])
    upper = np.array([config.joint_limits[j].upper for j in names])
    max_velocity = np.array([config.joint_limits[j].max_velocity for j in names])
    # Far outside the limits and demanded in 0.1 s: the robot must slew and stop at limits.
    robot.command_trajectory("arm", 0.0, [(0.1, np.full(7, 10.0), ()), (0.2, np.full(7, -10.0), ())])
    robot.command_trajectory("gripper", 0.0, [(0.1, [1.0], ())])
    record: list = []
    run(robot, 5.0, record)
    for _, q, v in record:
        assert np.all(q >= lower - 1e-12) and np.all(q <= upper + 1e-12)
        assert np.all(np.abs(v) <= max_velocity + 1e-9)
    _, q_end, v_end = record[-1]
    np.testing.assert_allclose(q_end[:7], lower[:7], atol=1e-9)  # held at the lower limits
    assert q_end[7] == pytest.approx(upper[7]) and np.all(v_end == 0)


def test_a_new_trajectory_replaces_the_old_one_from_the_current_state(config):
    robot = SimRobot(config, seed=0)
    home = arm_positions(robot)
    inward = toward_middle(config, home, 1.0)
    robot.command_trajectory("arm", 0.0, [(1.0, home + 0.4 * inward, ())])
    run(robot, 0.5)
    midway = arm_positions(robot)
    np.testing.assert_allclose(midway, home + 0.2 * inward, atol=1e-9)
    new_target = home + 0.05 * inward
    robot.command_trajectory("arm", 0.5, [(0.4, new_target, ())])
    run(robot, 0.7)  # halfway from where it was at 0.5 s to the new point
    np.testing.assert_allclose(arm_positions(robot), (midway + new_target) / 2, atol=1e-9)
    run(robot, 3.0)  # the old target (home + 0.4) is never resumed
    np.testing.assert_allclose(arm_positions(robot), new_target, atol=1e-9)


def test_points_already_past_are_skipped(config):
    robot = SimRobot(config, seed=0)
    home = arm_positions(robot)
    inward = toward_middle(config, home, 1.0)
    run(robot, 1.0)
    # Stamped 0.2 s ago: the first two points are past, only the last is kept.
    kept = robot.command_trajectory("arm", 0.8, [(0.0, home + 5.0 * inward, ()),
                                                  (0.1, home + 5.0 * inward, ()),
                                                  (0.7, home + 0.25 * inward, ())])
    assert kept == 1
    record: list = []
    run(robot, 2.0, record)
    for _, q, _ in record:  # never heads toward the skipped points
        assert np.all(np.abs(q[:7] - home) <= 0.25 + 1e-9)
    np.testing.assert_allclose(arm_positions(robot), home + 0.25 * inward, atol=1e-9)


def test_a_trajectory_entirely_in_the_past_is_rejected_and_the_old_one_continues(config):
    robot = SimRobot(config, seed=0)
    home = arm_positions(robot)
    inward = toward_middle(config, home, 1.0)
    robot.command_trajectory("arm", 0.0, [(2.0, home + 0.2 * inward, ())])
    run(robot, 1.0)
    assert robot.command_trajectory("arm", 0.1, [(0.5, home, ())]) == 0
    run(robot, 2.0)
    np.testing.assert_allclose(arm_positions(robot), home + 0.2 * inward, atol=1e-9)


def test_an_empty_trajectory_stops_the_group_where_it_is(config):
    robot = SimRobot(config, seed=0)
    home = arm_positions(robot)
    robot.command_trajectory("arm", 0.0, [(1.0, home + toward_middle(config, home, 0.4), ())])
    run(robot, 0.5)
    here = arm_positions(robot)
    assert robot.command_trajectory("arm", 0.0, []) == 0
    run(robot, 2.0)
    np.testing.assert_allclose(arm_positions(robot), here, atol=1e-9)


def test_other_groups_are_untouched_by_a_groups_trajectory(config):
    robot = SimRobot(config, seed=0)
    _, before, _ = robot.joint_state()
    robot.command_trajectory("gripper", 0.0, [(0.1, [0.0], ())])
    run(robot, 1.0)
    _, after, _ = robot.joint_state()
    np.testing.assert_array_equal(after[:7], before[:7])
    assert after[7] == 0.0


@pytest.mark.parametrize("points, message", [
    ([(0.5, [0.0] * 6, ())], "expected 7 finite values"),
    ([(0.5, [float("nan")] * 7, ())], "expected 7 finite values"),
    ([(0.5, [0.0] * 7, ()), (0.5, [0.0] * 7, ())], "strictly increasing"),
    ([(0.5, [0.0] * 7, (0.0,))], "expected 0 or 7"),
])
def test_malformed_trajectories_are_refused_with_the_offending_value(config, points, message):
    robot = SimRobot(config, seed=0)
    with pytest.raises(ValueError, match=message):
        robot.command_trajectory("arm", 0.0, points)


def test_wrong_joints_and_twist_on_a_fixed_base_are_refused(config):
    robot = SimRobot(config, seed=0)
    with pytest.raises(ValueError, match="expected exactly"):
        robot.command_trajectory("arm", 0.0, [(0.5, [0.0] * 7, ())], joint_names=ARM[:6] + ["x"])
    with pytest.raises(ValueError, match="no base_twist"):
        robot.command_twist(0.1, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="before the robot's time"):
        robot.step(1.0)
        robot.step(0.5)


def test_home_pose_is_inside_limits_and_overridable(config):
    robot = SimRobot(config, seed=0, home={"panda_joint7": 0.785})
    names, q, v = robot.joint_state()
    for name, value in zip(names, q):
        assert config.joint_limits[name].lower <= value <= config.joint_limits[name].upper
    assert q[names.index("panda_joint7")] == 0.785 and np.all(v == 0)
    with pytest.raises(ValueError, match="panda_joint4 = 0.5"):
        SimRobot(config, seed=0, home={"panda_joint4": 0.5})


def test_wall_clock_stamps_and_a_zero_stamp_meaning_now_work_like_the_controller(config):
    start = 1.7e9  # a ROS time in seconds, as the sim_robot node uses
    robot = SimRobot(config, seed=0, start_time_s=start)
    home = arm_positions(robot)
    target = home + toward_middle(config, home, 0.2)
    robot.command_trajectory("arm", start + 0.2, [(0.3, target, ())])
    robot.step(start + 0.5)
    np.testing.assert_allclose(arm_positions(robot), target, atol=1e-6)
    robot.command_trajectory("arm", 0.0, [(0.4, home, ())])  # stamp 0: starts now
    robot.step(start + 0.9)
    np.testing.assert_allclose(arm_positions(robot), home, atol=1e-6)
