"""Safety filter: limits from config, the first command starts at the measured state, NaN holds."""

from __future__ import annotations

import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.observation import Observation
from ki_vla_ros.runtime.safety import ActionLimits, SafetyFilter, SafetyStatus, measured_reference


@pytest.fixture(scope="module")
def config():
    return load_robot_config("single_arm")


@pytest.fixture(scope="module")
def safety(config):
    return SafetyFilter.from_robot_config(config)


def home(config):
    """A comfortable in-range pose: the middle of every joint range."""
    return np.array([(config.joint_limits[j].lower + config.joint_limits[j].upper) / 2
                     for j in config.joints])


def test_limits_come_from_config(config, safety):
    limits = safety.limits
    assert limits.names == config.action_names
    assert limits.lower[3] == -3.0718 and limits.upper[3] == -0.0698
    assert safety.max_step[0] == pytest.approx(2.175 * config.chunk.step_duration_s)
    assert safety.max_step[7] == pytest.approx(0.2 * config.chunk.step_duration_s)


def test_a_reachable_trajectory_passes_unchanged(config, safety):
    start = home(config)
    actions = start + np.linspace(0.0, 0.05, 5)[:, None] * np.ones(8) * 0.1
    result = safety.filter(actions, reference=start)
    assert result.status is SafetyStatus.OK and result.reasons == ()
    np.testing.assert_array_equal(result.actions, actions)


def test_velocity_limit_bounds_every_step_starting_from_the_measured_state(config, safety):
    measured = home(config)
    target = measured + 1.0  # a full radian away on every joint, from step 0 on
    actions = np.tile(np.clip(target, safety.limits.lower, safety.limits.upper), (10, 1))
    result = safety.filter(actions, reference=measured)
    assert result.status is SafetyStatus.CLIPPED
    steps = np.diff(np.vstack([measured, result.actions]), axis=0)
    assert np.all(np.abs(steps) <= safety.max_step + 1e-12)
    np.testing.assert_allclose(result.actions[0], measured + np.minimum(safety.max_step, 1.0))
    assert any("'panda_joint1' rate-limited to 0.2175 per step" in r for r in result.reasons)


def test_positions_are_clipped_to_joint_limits_and_reported(config, safety):
    measured = home(config)
    measured[3] = -0.08  # panda_joint4 near its upper limit -0.0698
    actions = np.tile(measured, (3, 1))
    actions[:, 3] = 0.5  # beyond the limit
    result = safety.filter(actions, reference=measured)
    assert result.status is SafetyStatus.CLIPPED
    np.testing.assert_allclose(result.actions[:, 3], -0.0698)
    assert any(r.startswith("'panda_joint4' clipped to [-3.072, -0.0698] at 3 step(s)")
               for r in result.reasons)


def test_from_a_reference_outside_the_range_it_walks_in_at_the_rate_limit(config, safety):
    measured = home(config)
    measured[7] = 0.06  # gripper reading beyond its 0.04 m upper limit
    result = safety.filter(np.tile(measured, (5, 1)), reference=measured)
    steps = np.diff(np.concatenate([[0.06], result.actions[:, 7]]))
    assert np.all(np.abs(steps) <= safety.max_step[7] + 1e-12)
    assert result.actions[-1, 7] == pytest.approx(0.04)
    assert any("reference 0.06 is outside" in r for r in result.reasons)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_actions_holds_with_no_command(config, safety, bad):
    actions = np.tile(home(config), (6, 1))
    actions[4, 2] = bad
    result = safety.filter(actions, reference=home(config))
    assert result.status is SafetyStatus.HOLD and result.hold
    assert result.actions is None
    assert result.reasons == (f"action 'panda_joint3' is {bad} at step 4 (1 non-finite value(s)); holding",)


def test_nan_in_the_measured_reference_holds(config, safety):
    reference = home(config)
    reference[0] = np.nan
    result = safety.filter(np.tile(home(config), (2, 1)), reference=reference)
    assert result.hold and result.actions is None and "reference for 'panda_joint1' is nan" in result.reasons[0]


def test_a_wrongly_shaped_command_holds_instead_of_raising(safety):
    result = safety.filter(np.zeros((4, 7)), reference=np.zeros(8))
    assert result.hold and "expected [steps >= 1, 8]" in result.reasons[0]


def test_a_single_command_is_filtered_like_a_one_step_trajectory(config, safety):
    measured = home(config)
    result = safety.filter(measured + 10.0, reference=measured)
    assert result.actions.shape == (8,)
    assert np.all(np.abs(result.actions - measured) <= safety.max_step + 1e-12)


def test_base_velocity_is_bounded_and_its_change_limited_by_acceleration():
    config = load_robot_config("mobile")
    safety = SafetyFilter.from_robot_config(config)
    limits = ActionLimits.from_robot_config(config)
    assert limits.upper[14:].tolist() == [0.5, 0.5, 1.0] and limits.lower[14:].tolist() == [-0.5, -0.5, -1.0]
    reference = np.array([(config.joint_limits[j].lower + config.joint_limits[j].upper) / 2
                          for j in config.joints] + [0.0, 0.0, 0.0])
    actions = np.tile(reference, (30, 1))
    actions[:, 14] = 2.0  # vx far above 0.5 m/s
    result = safety.filter(actions, reference=reference)
    vx = result.actions[:, 14]
    assert vx.max() == pytest.approx(0.5)
    step = 1.0 * config.chunk.step_duration_s  # max_acceleration 1.0 m/s^2
    assert np.all(np.diff(np.concatenate([[0.0], vx])) <= step + 1e-12)


def test_the_measured_reference_is_in_action_layout():
    mobile = load_robot_config("mobile")
    joints = np.arange(14, dtype=np.float32)
    with_odom = Observation(1.0, (), joints, "p", base_velocity=np.array([0.1, 0.0, 0.2], np.float32))
    reference = measured_reference(with_odom, mobile)
    assert reference.shape == (mobile.action_dim,)
    np.testing.assert_allclose(reference[14:], [0.1, 0.0, 0.2], rtol=1e-6)
    without_odom = Observation(1.0, (), joints, "p")
    np.testing.assert_array_equal(measured_reference(without_odom, mobile)[14:], 0.0)
    single = load_robot_config("single_arm")
    assert measured_reference(Observation(1.0, (), np.zeros(8, np.float32), "p"), single).shape == (8,)
