"""Chunk execution: latency compensation, blending, re-planning, per-group commands."""

from __future__ import annotations

import numpy as np
import pytest

from ki_vla_ros.runtime.action_chunk import ActionChunk
from ki_vla_ros.runtime.chunking import ChunkScheduler, Trajectory, blend, compensate_latency
from ki_vla_ros.runtime.commands import (
    base_twist_samples,
    finite_difference_velocities,
    joint_trajectory_commands,
    twist_at,
)
from ki_vla_ros.runtime.config import ChunkConfig, load_robot_config

DT = 0.1
NAMES = ("j1", "j2")


def chunk(stamp_s, actions, names=NAMES, dt=DT):
    actions = np.asarray(actions, dtype=np.float32)
    return ActionChunk(stamp_s=stamp_s, start_time_s=stamp_s, step_duration_s=dt, action_names=names,
                       actions=actions, inference_latency_s=0.0, instruction="test")


def ramp(steps, start=0.0, slope=1.0, dims=2):
    return np.stack([start + slope * np.arange(steps)] * dims, axis=1)


def chunk_config(**overrides):
    values = dict(horizon_steps=10, execute_steps=5, min_remaining_steps=3, step_duration_s=DT,
                  blend_steps=4)
    return ChunkConfig(**(values | overrides))


@pytest.mark.parametrize("latency_s, dropped", [(0.0, 0), (0.05, 1), (0.1, 1), (0.25, 3), (0.9, 9)])
def test_latency_compensation_drops_exactly_the_elapsed_steps(latency_s, dropped):
    trajectory, n = compensate_latency(chunk(100.0, ramp(10)), now_s=100.0 + latency_s)
    assert n == dropped
    assert trajectory.num_steps == 10 - dropped
    assert trajectory.start_time_s == pytest.approx(100.0 + dropped * DT)
    assert trajectory.actions[0, 0] == dropped  # the ramp value of the first kept step


def test_a_chunk_whose_steps_all_passed_yields_nothing():
    trajectory, dropped = compensate_latency(chunk(100.0, ramp(10)), now_s=101.5)
    assert trajectory is None and dropped == 10


def test_only_the_configured_horizon_is_used():
    trajectory, _ = compensate_latency(chunk(0.0, ramp(50)), now_s=0.0, horizon_steps=16)
    assert trajectory.num_steps == 16


def test_blend_has_no_jump_larger_than_the_gap_split_over_blend_steps():
    old = Trajectory(10.0, DT, NAMES, np.zeros((10, 2)))
    new = Trajectory(10.3, DT, NAMES, np.ones((7, 2)))  # the new plan is 1.0 away
    blended = blend(old, new, blend_steps=4)
    stream = np.concatenate([old.sample(np.array([10.2])), blended.actions])
    jumps = np.abs(np.diff(stream, axis=0))
    assert jumps.max() <= 1.0 / 5 + 1e-12
    np.testing.assert_allclose(blended.actions[4:], 1.0)  # pure new plan after the blend


def test_blend_samples_the_old_trajectory_at_the_new_steps_times():
    old = Trajectory(0.0, DT, NAMES, ramp(10))  # value k at time k * DT
    new = Trajectory(0.35, DT, NAMES, ramp(5, start=3.5))  # agrees with old, off-grid
    blended = blend(old, new, blend_steps=3)
    np.testing.assert_allclose(blended.actions, new.actions)  # no disagreement -> no change


def test_without_a_previous_trajectory_the_new_one_is_used_as_is():
    new = Trajectory(0.0, DT, NAMES, ramp(5))
    assert blend(None, new, blend_steps=4) is new


def test_scheduler_plans_without_committing_and_blends_with_what_it_executes():
    scheduler = ChunkScheduler(chunk_config())
    first = scheduler.plan(chunk(0.0, np.zeros((10, 2))), now_s=0.02)
    assert first.dropped_steps == 1 and first.blended_steps == 0
    assert scheduler.current is None  # plan() changes nothing
    scheduler.commit(first.trajectory, stamp_s=0.0)
    second = scheduler.plan(chunk(0.5, np.ones((10, 2))), now_s=0.62)
    assert second.dropped_steps == 2 and second.blended_steps == 4
    np.testing.assert_allclose(second.trajectory.actions[:5, 0], [0.2, 0.4, 0.6, 0.8, 1.0])


def test_scheduler_ignores_a_chunk_older_than_the_one_executing():
    scheduler = ChunkScheduler(chunk_config())
    scheduler.commit(scheduler.plan(chunk(1.0, ramp(10)), now_s=1.0).trajectory, stamp_s=1.0)
    plan = scheduler.plan(chunk(0.9, ramp(10)), now_s=1.05)
    assert plan.trajectory is None and "not newer" in plan.reason


def test_scheduler_reports_a_chunk_that_arrived_too_late():
    plan = ChunkScheduler(chunk_config()).plan(chunk(0.0, ramp(10)), now_s=2.0)
    assert plan.trajectory is None and "all 10 steps" in plan.reason and "latency 2.000 s" in plan.reason


def test_next_chunk_is_requested_after_execute_steps():
    scheduler = ChunkScheduler(chunk_config(execute_steps=5, min_remaining_steps=0))
    assert scheduler.should_request_chunk(0.0)  # nothing to execute
    scheduler.commit(Trajectory(0.0, DT, NAMES, ramp(10)), stamp_s=0.0)
    assert scheduler.steps_executed(0.35) == 4 and not scheduler.should_request_chunk(0.35)
    assert scheduler.steps_executed(0.4) == 5 and scheduler.should_request_chunk(0.4)


def test_next_chunk_is_requested_early_when_few_steps_remain():
    scheduler = ChunkScheduler(chunk_config(execute_steps=5, min_remaining_steps=3))
    scheduler.commit(Trajectory(0.0, DT, NAMES, ramp(4)), stamp_s=0.0)  # a short chunk
    assert scheduler.steps_remaining(0.05) == 3 and not scheduler.should_request_chunk(0.05)
    assert scheduler.steps_remaining(0.1) == 2 and scheduler.should_request_chunk(0.1)


def test_hold_forgets_the_trajectory_so_the_next_chunk_is_not_blended():
    scheduler = ChunkScheduler(chunk_config())
    scheduler.commit(Trajectory(0.0, DT, NAMES, ramp(10)), stamp_s=0.0)
    scheduler.hold()
    plan = scheduler.plan(chunk(0.5, np.ones((10, 2))), now_s=0.5)
    assert plan.blended_steps == 0
    np.testing.assert_allclose(plan.trajectory.actions, 1.0)


def test_velocities_are_finite_differences_and_zero_at_the_end():
    positions = np.array([[0.0], [0.1], [0.3], [0.6]])
    velocities = finite_difference_velocities(positions, 0.1)
    np.testing.assert_allclose(velocities[:, 0], [1.0, 1.5, 2.5, 0.0])


def test_joint_trajectory_commands_per_group_carry_absolute_start_and_relative_times():
    config = load_robot_config("single_arm")
    actions = np.tile(np.arange(config.action_dim, dtype=float), (4, 1)) + np.arange(4)[:, None] * 0.01
    trajectory = Trajectory(50.3, 0.1, config.action_names, actions)
    commands = {c.group: c for c in joint_trajectory_commands(trajectory, config)}
    assert set(commands) == {"arm", "gripper"}
    arm, gripper = commands["arm"], commands["gripper"]
    assert arm.start_time_s == 50.3 and arm.joint_names == config.action_group("arm").joints
    assert [p.time_from_start_s for p in arm.points] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert arm.points[2].positions == pytest.approx(tuple(np.arange(7) + 0.02))
    assert arm.points[1].velocities == pytest.approx((0.1,) * 7)
    assert arm.points[-1].velocities == (0.0,) * 7
    assert gripper.joint_names == ("panda_finger_joint1",)
    assert gripper.points[0].positions == pytest.approx((7.0,))


def test_base_twist_is_sampled_at_control_rate_for_the_mobile_base():
    config = load_robot_config("mobile")
    actions = np.zeros((3, config.action_dim))
    actions[:, 14] = [0.0, 0.1, 0.2]  # vx ramps up
    actions[:, 16] = -0.3  # constant turn
    trajectory = Trajectory(7.0, 0.1, config.action_names, actions)
    samples = base_twist_samples(trajectory, config)  # control_rate_hz = 50
    assert len(samples) == 11  # 7.00 ... 7.20 every 20 ms
    assert samples[5].time_s == pytest.approx(7.1)
    assert samples[5].linear_x == pytest.approx(0.1)
    assert samples[6].linear_x == pytest.approx(0.12)
    assert all(s.angular_z == pytest.approx(-0.3) and s.linear_y == 0.0 for s in samples)
    assert twist_at(trajectory, config, 7.15).linear_x == pytest.approx(0.15)
    assert {c.group for c in joint_trajectory_commands(trajectory, config)} == {
        "left_arm", "left_gripper", "right_arm", "right_gripper"}


def test_a_robot_without_base_streams_no_twist():
    config = load_robot_config("single_arm")
    trajectory = Trajectory(0.0, 0.1, config.action_names, np.zeros((3, 8)))
    assert base_twist_samples(trajectory, config) == [] and twist_at(trajectory, config, 0.0) is None


def test_no_planned_trajectory_ends_before_it_can_reach_the_controller():
    """A one-point trajectory due now (time_from_start 0) arrived after its end and
    joint_trajectory_controller rejected it: every planned trajectory ends at least
    ARRIVAL_MARGIN_S after now, or the chunk is skipped with a reason."""
    from ki_vla_ros.runtime.chunking import ARRIVAL_MARGIN_S

    for latency_s in np.arange(0.0, 1.0, 0.0025):
        now_s = 100.0 + latency_s
        plan = ChunkScheduler(chunk_config()).plan(chunk(100.0, ramp(10)), now_s=now_s)
        if plan.trajectory is None:
            assert plan.reason
        else:
            assert plan.trajectory.end_time_s >= now_s + ARRIVAL_MARGIN_S, latency_s


def test_a_chunk_whose_last_step_is_due_now_is_skipped_with_the_reason():
    plan = ChunkScheduler(chunk_config()).plan(chunk(100.0, ramp(10)), now_s=100.9)
    assert plan.trajectory is None
    assert "ends at 100.900000 s, 0.0 ms after now" in plan.reason and "ARRIVAL_MARGIN_S = 20 ms" in plan.reason
