"""Command mux: teleop / policy / hold, source timeouts, bumpless hand-off, measured on its output."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from ki_vla_ros.runtime.commands import JointTrajectoryCommand, TrajectoryPoint, TwistCommand
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.mux import (
    CommandMux,
    CommandSource,
    Disposition,
    MuxMode,
    bumpless_start,
)

CONFIG = load_robot_config("single_arm")  # policy_timeout 1.0, teleop_timeout 0.5, max_step 0.05
ARM = CONFIG.action_group("arm").joints
GRIPPER = CONFIG.action_group("gripper").joints
MAX_STEP = CONFIG.mux.max_step_rad
RAMP_DT = CONFIG.mux.ramp_step_duration_s
HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])


def arm_command(positions, start_s: float, dt: float = 0.1, velocities: bool = True) -> JointTrajectoryCommand:
    """A policy-style trajectory: point k at start_s + k * dt."""
    positions = np.atleast_2d(np.asarray(positions, dtype=np.float64))
    points = tuple(TrajectoryPoint(k * dt, tuple(row), (0.0,) * len(row) if velocities else ())
                   for k, row in enumerate(positions))
    return JointTrajectoryCommand("arm", ARM, start_s, points)


def gripper_command(position: float, start_s: float) -> JointTrajectoryCommand:
    return JointTrajectoryCommand("gripper", GRIPPER, start_s, (TrajectoryPoint(0.1, (position,), ()),))


def mux_at(arm=HOME, gripper=0.04, stamp_s=0.0, mode=None) -> CommandMux:
    mux = CommandMux(CONFIG)
    measure(mux, arm, gripper, stamp_s)
    if mode is not None:
        mux.switch(mode, stamp_s)
        mux.tick(stamp_s)  # the switch's holds
    return mux


def measure(mux: CommandMux, arm, gripper: float, stamp_s: float) -> None:
    mux.on_joint_state(ARM, list(arm), stamp_s)
    mux.on_joint_state(GRIPPER, [gripper], stamp_s)


def positions_of(command: JointTrajectoryCommand) -> np.ndarray:
    return np.array([p.positions for p in command.points])


def times_of(command: JointTrajectoryCommand) -> np.ndarray:
    return command.start_time_s + np.array([p.time_from_start_s for p in command.points])


def largest_step(command: JointTrajectoryCommand) -> float:
    """Largest joint change between consecutive points (0 for a single point)."""
    return float(np.max(np.abs(np.diff(positions_of(command), axis=0)), initial=0.0))


# ---------------------------------------------------------------------- modes and switching


def test_starts_in_the_configured_mode_holding_without_sending_anything():
    mux = mux_at()
    assert mux.mode is MuxMode.POLICY
    assert mux.tick(0.1) == []  # the controllers already hold at start-up
    status = mux.status(0.1)
    assert all(g.holding and "waiting for the first policy command" in g.reason for g in status.groups)


def test_unknown_mode_rejected_with_message_naming_it():
    mux = mux_at()
    ok, message = mux.switch("autonomous", 1.0)
    assert not ok
    assert "'autonomous'" in message and "teleop, policy, hold" in message
    assert mux.mode is MuxMode.POLICY and mux.status(1.0).mode_switches == 0


def test_switches_are_counted_and_switching_to_the_current_mode_is_not_a_switch():
    mux = mux_at()
    assert mux.switch(" Teleop ", 1.0) == (True, "switched from policy to teleop; holding until "
                                                 "the first teleop command (bumpless start)")
    assert mux.switch("teleop", 1.1) == (True, "already in teleop mode")
    assert mux.switch(MuxMode.HOLD, 1.2)[0]
    assert mux.status(1.2).mode_switches == 2


def test_only_the_active_source_is_forwarded():
    mux = mux_at(mode="teleop", stamp_s=1.0)
    policy = mux.on_command("policy", arm_command(HOME, 1.0), now_s=1.0)
    teleop = mux.on_command(CommandSource.TELEOP, arm_command(HOME, 1.0), now_s=1.0)
    assert policy.disposition is Disposition.IGNORED and "mode is teleop" in policy.reason
    assert teleop.forwarded


def test_hold_mode_forwards_nothing_and_holds_every_group_once_at_the_measured_position():
    mux = mux_at(mode="policy")
    mux.on_command("policy", arm_command(HOME + 0.01, 0.0), now_s=0.0)
    mux.on_command("policy", gripper_command(0.035, 0.0), now_s=0.0)
    measure(mux, HOME + 0.02, 0.03, 0.5)
    assert mux.switch("hold", 0.5)[0]
    holds = mux.tick(0.5)
    assert [h.group for h in holds] == ["arm", "gripper"]
    np.testing.assert_allclose(holds[0].command.points[0].positions, HOME + 0.02)
    assert holds[1].command.points[0].positions == (0.03,)
    assert "switched from policy to hold" in holds[0].reason
    assert mux.tick(0.52) == []  # once per entry into hold
    for source in ("policy", "teleop"):
        assert mux.on_command(source, arm_command(HOME, 0.6), 0.6).disposition is Disposition.IGNORED


def test_hold_point_is_reached_in_the_future_so_the_controller_accepts_it():
    mux = mux_at(mode="policy", stamp_s=3.0)
    mux.on_command("policy", arm_command(HOME, 3.0), 3.0)
    mux.switch("hold", 3.1)
    (arm_hold,) = mux.tick(3.1)  # the gripper never moved: nothing to stop
    command = arm_hold.command
    assert command.start_time_s == 3.1 and len(command.points) == 1
    assert command.points[0].time_from_start_s == RAMP_DT > 0  # ends after receipt
    assert command.points[0].velocities == (0.0,) * 7


# ---------------------------------------------------------------------- bumpless hand-off


def test_switch_to_policy_with_the_arm_0_3_rad_away_ramps_from_the_measured_state():
    measured = HOME.copy()
    mux = mux_at(arm=measured, mode="teleop", stamp_s=10.0)
    assert mux.switch("policy", 10.0)[0]
    target = measured + np.array([0.3, -0.3, 0.1, 0.0, 0.0, 0.0, 0.0])
    chunk = np.linspace(target, target + 0.02, 10)  # the policy's plan, 0.3 rad from the arm
    decision = mux.on_command("policy", arm_command(chunk, start_s=10.0), now_s=10.0)

    assert decision.forwarded and "hand-off to policy" in decision.reason
    out = decision.command
    np.testing.assert_array_equal(out.points[0].positions, measured)  # starts where the arm is
    assert out.start_time_s == 10.0 and out.points[0].time_from_start_s == 0.0
    assert largest_step(out) <= MAX_STEP + 1e-12  # measured -> first point included
    assert decision.inserted_points == 5  # 0.3 rad in 6 steps of 0.05
    np.testing.assert_allclose(positions_of(out)[-10:], chunk)  # then the policy's own plan
    # The ramp moves at most max_step_rad per ramp step; the plan keeps its 0.1 s spacing.
    times = times_of(out)
    speeds = np.abs(np.diff(positions_of(out), axis=0)) / np.diff(times)[:, None]
    assert speeds.max() <= MAX_STEP / RAMP_DT + 1e-9
    np.testing.assert_allclose(np.diff(times[-10:]), 0.1)
    assert times[6] == pytest.approx(10.0 + 6 * RAMP_DT)  # first policy point after the ramp


def test_hand_off_velocities_start_and_end_at_zero_and_follow_the_ramp_between():
    mux = mux_at(mode="policy", stamp_s=0.0)
    out = mux.on_command("policy", arm_command(HOME + 0.2, start_s=0.0), now_s=0.0).command
    velocities = np.array([p.velocities for p in out.points])
    assert np.all(velocities[0] == 0.0) and np.all(velocities[-1] == 0.0)
    np.testing.assert_allclose(velocities[1:-1], MAX_STEP / RAMP_DT)


def test_hand_off_within_max_step_prepends_the_measured_state_only():
    mux = mux_at(mode="policy", stamp_s=0.0)
    chunk = np.linspace(HOME + 0.01, HOME + 0.05, 5)
    decision = mux.on_command("policy", arm_command(chunk, start_s=0.0), now_s=0.0)
    assert decision.inserted_points == 0
    np.testing.assert_allclose(positions_of(decision.command), np.vstack([HOME, chunk]))


def test_large_steps_inside_the_first_command_are_split_within_their_own_time():
    mux = mux_at(mode="policy", stamp_s=0.0)
    chunk = np.array([HOME, HOME + 0.2, HOME + 0.2])  # a 0.2 rad jump between points 0 and 1
    out = mux.on_command("policy", arm_command(chunk, start_s=0.0), now_s=0.0).command
    assert largest_step(out) <= MAX_STEP + 1e-12
    times = times_of(out)
    assert times[-1] - times[-2] == pytest.approx(0.1)
    assert times[-2] - times[1] == pytest.approx(0.1)  # 4 sub-steps inside the original 0.1 s


def test_commands_after_the_hand_off_pass_unchanged_when_continuous():
    mux = mux_at(mode="policy", stamp_s=0.0)
    first = np.linspace(HOME, HOME + 0.09, 10)
    mux.on_command("policy", arm_command(first, 0.0), now_s=0.0)
    second = arm_command(np.linspace(HOME + 0.05, HOME + 0.14, 10), start_s=0.5)  # a blended next chunk
    decision = mux.on_command("policy", second, now_s=0.5)
    assert decision.forwarded and decision.command is second and decision.inserted_points == 0


def test_a_jump_between_two_commands_is_ramped_from_where_the_stream_is():
    mux = mux_at(mode="teleop", stamp_s=0.0)
    mux.on_command("teleop", arm_command(HOME, 0.0), now_s=0.0)
    decision = mux.on_command("teleop", arm_command(HOME + 0.3, 0.2), now_s=0.2)
    assert decision.forwarded and "from the stream already sent" in decision.reason
    np.testing.assert_allclose(decision.command.points[0].positions, HOME)
    assert largest_step(decision.command) <= MAX_STEP + 1e-12


def test_a_command_stamped_zero_starts_on_receipt():
    mux = mux_at(mode="teleop", stamp_s=100.0)
    command = JointTrajectoryCommand("arm", ARM, 0.0, (TrajectoryPoint(0.5, tuple(HOME + 0.04), ()),))
    out = mux.on_command("teleop", command, now_s=100.0).command
    assert out.start_time_s == 100.0
    assert [p.time_from_start_s for p in out.points] == [0.0, 0.5]  # its own 0.5 s, not the past
    assert out.points[1].velocities == ()  # positions-only in, positions-only out


def test_bumpless_start_accepts_joints_in_any_order():
    names = tuple(reversed(ARM))
    command = JointTrajectoryCommand("arm", names, 1.0, (TrajectoryPoint(0.1, tuple(np.full(7, 0.1)), ()),))
    out, inserted = bumpless_start(command, np.zeros(7), 1.0, max_step_rad=0.05, ramp_speed_rad_s=0.5,
                                   min_ramp_s=0.02)
    assert out.joint_names == names and inserted == 1
    assert [p.positions[0] for p in out.points] == pytest.approx([0.0, 0.05, 0.1])
    assert [p.time_from_start_s for p in out.points] == pytest.approx([0.0, 0.1, 0.2])


def test_a_first_point_already_at_the_measured_state_is_delayed_by_one_control_period_only():
    mux = mux_at(mode="policy", stamp_s=0.0)
    out = mux.on_command("policy", arm_command(np.tile(HOME, (3, 1)), start_s=0.0), now_s=0.0).command
    assert [p.time_from_start_s for p in out.points] == pytest.approx([0.0, 0.02, 0.12, 0.22])


# ---------------------------------------------------------------------- timeouts


def test_teleop_silent_past_timeout_holds_at_the_measured_position():
    mux = mux_at(mode="teleop", stamp_s=0.0)
    assert mux.on_command("teleop", arm_command(HOME + 0.01, 0.0), now_s=0.0).forwarded
    measure(mux, HOME + 0.012, 0.04, 0.4)
    assert mux.tick(0.45) == []  # within teleop_timeout_s (0.5)
    holds = mux.tick(0.55)
    assert [h.group for h in holds] == ["arm"]  # the gripper never started, nothing to stop
    np.testing.assert_allclose(holds[0].command.points[0].positions, HOME + 0.012)
    assert "teleop commands for group 'arm' silent for 0.550 s (> teleop_timeout_s = 0.5 s)" in holds[0].reason
    assert "holding at the measured position" in holds[0].reason
    assert mux.tick(0.6) == [] and mux.tick(5.0) == []  # one hold per entry into hold
    arm = mux.status(5.0).groups[0]
    assert arm.holding and "silent" in arm.reason
    assert mux.counters.timeouts == 1 and mux.counters.holds_sent == 1


def test_hold_after_a_timeout_lasts_until_the_source_resumes_then_hands_off_bumplessly():
    mux = mux_at(mode="policy", stamp_s=0.0)
    mux.on_command("policy", arm_command(HOME, 0.0), now_s=0.0)
    assert len(mux.tick(1.2)) == 1  # policy_timeout_s 1.0
    measure(mux, HOME + 0.1, 0.04, 2.0)  # someone pushed the arm while it held
    decision = mux.on_command("policy", arm_command(HOME + 0.25, 2.0), now_s=2.0)
    assert decision.forwarded and "hand-off to policy" in decision.reason
    np.testing.assert_allclose(decision.command.points[0].positions, HOME + 0.1)
    assert largest_step(decision.command) <= MAX_STEP + 1e-12
    assert not mux.status(2.0).groups[0].holding


def test_a_late_command_after_a_silence_is_handed_off_even_if_no_tick_saw_the_timeout():
    mux = mux_at(mode="teleop", stamp_s=0.0)
    mux.on_command("teleop", arm_command(HOME, 0.0), now_s=0.0)
    measure(mux, HOME + 0.2, 0.04, 3.0)
    decision = mux.on_command("teleop", arm_command(HOME + 0.2, 3.0), now_s=3.0)
    np.testing.assert_allclose(decision.command.points[0].positions, HOME + 0.2)
    assert "hand-off" in decision.reason


def test_nan_command_is_dropped_with_a_reason_and_does_not_keep_the_source_alive():
    mux = mux_at(mode="policy", stamp_s=0.0)
    mux.on_command("policy", arm_command(HOME, 0.0), now_s=0.0)
    bad = np.tile(HOME, (3, 1))
    bad[2, 4] = math.nan
    for t in (0.4, 0.8, 1.2):
        decision = mux.on_command("policy", arm_command(bad, t), now_s=t)
        assert decision.disposition is Disposition.DROPPED and decision.command is None
        assert "point 2 position of 'panda_joint5' is nan" in decision.reason
    assert [h.group for h in mux.tick(1.2)] == ["arm"]  # silent since 0.0 as far as the mux cares


@pytest.mark.parametrize("command, expected", [
    (JointTrajectoryCommand("arm", ARM[:6], 0.0, (TrajectoryPoint(0.1, (0.0,) * 6, ()),)),
     "expected exactly the group's joints"),
    (JointTrajectoryCommand("arm", ARM, 0.0, ()), "no points"),
    (JointTrajectoryCommand("arm", ARM, 0.0, (TrajectoryPoint(0.2, tuple(HOME), ()),
                                              TrajectoryPoint(0.1, tuple(HOME), ()))),
     "point 1 time_from_start is 0.1 s; expected >= 0 and increasing"),
    (JointTrajectoryCommand("wrist", ARM, 0.0, ()), "unknown action group 'wrist'"),
])
def test_malformed_commands_are_dropped_naming_the_problem(command, expected):
    mux = mux_at(mode="policy")
    decision = mux.on_command("policy", command, now_s=0.0)
    assert decision.disposition is Disposition.DROPPED and expected in decision.reason


def test_without_a_fresh_joint_state_the_hand_off_is_refused_and_the_group_keeps_holding():
    mux = mux_at(mode="policy", stamp_s=0.0)
    decision = mux.on_command("policy", arm_command(HOME, 2.0), now_s=2.0)  # joint states 2 s old
    assert decision.disposition is Disposition.DROPPED
    assert "bumplessly" in decision.reason and "'panda_joint1' is 2.000 s old" in decision.reason
    assert mux.status(2.0).groups[0].holding


def test_hold_without_a_joint_state_freezes_the_last_commanded_position():
    mux = mux_at(mode="policy", stamp_s=0.0)
    plan = np.linspace(HOME, HOME + 0.045, 10)
    mux.on_command("policy", arm_command(plan, 0.0), now_s=0.0)
    mux.switch("hold", 0.55)  # joint states went silent at 0.0 (> joint_state_max_age_s)
    arm_hold = mux.tick(0.55)[0]
    # The sent stream at 0.55 s: the plan started at the measured state one control period
    # (0.02 s) late, so it is at plan time 0.53 s, between points 5 and 6.
    np.testing.assert_allclose(arm_hold.command.points[0].positions, HOME + 0.0265, atol=1e-9)
    assert "last commanded position" in arm_hold.reason and "old" in arm_hold.reason


# ---------------------------------------------------------------------- mobile base


def test_base_twist_is_forwarded_and_held_at_zero_velocity_on_timeout():
    config = load_robot_config("mobile")
    mux = CommandMux(config)
    mux.switch("teleop", 0.0)
    mux.tick(0.0)
    drive = TwistCommand("base", 0.1, linear_x=0.3, angular_z=0.2)
    assert mux.on_command("teleop", drive, now_s=0.1).command is drive
    (hold,) = [h for h in mux.tick(0.1 + config.mux.teleop_timeout_s + 0.01) if h.group == "base"]
    assert hold.command == TwistCommand("base", hold.command.time_s)  # all zero
    nan_drive = TwistCommand("base", 1.0, linear_x=math.nan)
    assert mux.on_command("teleop", nan_drive, 1.0).disposition is Disposition.DROPPED


# ---------------------------------------------------------------------- threads


def test_concurrent_commands_switches_and_ticks_keep_the_output_bumpless():
    mux = mux_at(mode="policy", stamp_s=0.0)
    forwarded: list[JointTrajectoryCommand] = []
    lock = threading.Lock()
    stop = threading.Event()
    clock = {"t": 0.0}

    def source(name):
        while not stop.is_set():
            t = clock["t"]
            decision = mux.on_command(name, arm_command(HOME + 0.2 * (name == "policy"), t), now_s=t)
            if decision.forwarded:
                with lock:
                    forwarded.append(decision.command)

    threads = [threading.Thread(target=source, args=(s,)) for s in ("policy", "teleop")]
    for t in threads:
        t.start()
    for k in range(1, 60):
        clock["t"] = 0.01 * k
        measure(mux, HOME, 0.04, clock["t"])
        mux.switch("teleop" if k % 2 else "policy", clock["t"])
        mux.tick(clock["t"])
    stop.set()
    for t in threads:
        t.join()
    assert mux.status(1.0).mode_switches == 59
    assert forwarded and all(largest_step(c) <= MAX_STEP + 1e-12 for c in forwarded)


def test_time_spent_holding_counts_holds_after_motion_not_the_start_up_wait():
    mux = mux_at(mode="policy", stamp_s=0.0)
    assert mux.status(5.0).groups[0].holding_s == 0.0  # never moved: the start-up wait is not a hold
    measure(mux, HOME, 0.04, 5.0)
    assert mux.on_command("policy", arm_command(HOME, 5.0), now_s=5.0).forwarded
    assert len(mux.tick(6.5)) == 1  # silent 1.5 s > policy_timeout_s: holds from 6.5 s
    assert mux.status(7.0).groups[0].holding_s == pytest.approx(0.5)
    measure(mux, HOME, 0.04, 8.0)
    assert mux.on_command("policy", arm_command(HOME, 8.0), now_s=8.0).forwarded
    assert mux.status(20.0).groups[0].holding_s == pytest.approx(1.5)  # 6.5 .. 8.0, then moving
    mux.switch("hold", 21.0)
    assert mux.status(22.0).groups[0].holding_s == pytest.approx(2.5)


def test_switching_to_hold_on_exit_holds_every_moving_group_at_the_measured_position():
    """What command_mux does when it is stopped (prepare_to_exit): switch to hold, then tick."""
    mux = mux_at(mode="policy", stamp_s=0.0)
    mux.on_command("policy", arm_command([HOME, HOME + 0.04], 0.0), now_s=0.0)
    measure(mux, HOME + 0.01, 0.04, 0.05)
    mux.switch(MuxMode.HOLD, 0.1)
    holds = mux.tick(0.1)
    assert [h.group for h in holds] == ["arm"]  # the gripper never moved
    point = holds[0].command.points[0]
    np.testing.assert_allclose(point.positions, HOME + 0.01)
    assert point.velocities == (0.0,) * len(ARM)
