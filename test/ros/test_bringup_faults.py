"""`ki-vla bringup` under faults, on the real graph (separate processes, real DDS):

- SIGINT, SIGTERM and SIGHUP to bringup stop every node, policy first, and the controllers'
  last command is a hold at the measured position (not the policy's last trajectory);
- a policy_node killed with SIGKILL: the mux holds the robot before anything exits, and
  bringup exits non-zero naming the node and how it died;
- a failed configure is an ERROR on /diagnostics, and bringup exits non-zero naming it;
- a normal stop prints no traceback.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ros_helpers import Collector

from ki_vla_ros.runtime.config import load_robot_config

CONFIG = load_robot_config("single_arm")
STOP_DEADLINE_S = 45.0


class Bringup:
    """`python -m ki_vla_ros.cli bringup single_arm --sim`, with its output in a file."""

    def __init__(self, env, log_path, *extra):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ki_vla_ros.cli", "bringup", "single_arm", "--sim", *extra],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text()

    def node_pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in re.findall(r"(\w+) \(pid (\d+)\)", self.output())}

    def wait(self, timeout_s: float = STOP_DEADLINE_S) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"bringup did not exit within {timeout_s} s:\n{self.output()[-3000:]}")
        finally:
            self._log.close()

    def kill_everything(self) -> None:
        for pid in [self.process.pid, *self.node_pids().values()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _controller_probe(ros_graph):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    probe = ros_graph.node("controller_probe")
    outputs = {g.name: Collector(probe, JointTrajectory, g.controller_topic) for g in CONFIG.action_groups}
    joint_states = Collector(probe, JointState, CONFIG.joint_states_topic, qos_profile_sensor_data)
    return outputs, joint_states


def _wait_for_policy_motion(bringup, outputs, min_commands=4, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while len(outputs["arm"]) < min_commands:
        assert bringup.process.poll() is None, f"bringup exited early:\n{bringup.output()[-3000:]}"
        assert time.monotonic() < deadline, f"no policy commands on the arm controller:\n{bringup.output()[-3000:]}"
        time.sleep(0.1)
    assert len(bringup.node_pids()) == 3, bringup.output()


def _seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _reference_at(trajectory, time_s: float) -> np.ndarray:
    """A controller command's positions at absolute time_s, linearly interpolated between its
    points and clamped at both ends (how the mux samples what it sent)."""
    times = _seconds(trajectory.header.stamp) + np.array([_seconds(p.time_from_start) for p in trajectory.points])
    positions = np.array([p.positions for p in trajectory.points])
    return np.array([np.interp(time_s, times, positions[:, j]) for j in range(positions.shape[1])])


def _assert_last_command_is_a_hold(outputs, joint_states):
    """Every group that was moving ended with a one-point, zero-velocity hold, not with a
    multi-point trajectory: at the measured position (the policy's own hold or the mux's), or,
    where the mux's joint state was too old (the mux's documented fallback; it happens when
    the machine is loaded), at the previous command's position at the hold's time, which
    stops the controller's reference where it was."""
    measured = dict(zip(joint_states.messages[-1].name, joint_states.messages[-1].position))
    for group in CONFIG.action_groups:
        messages = outputs[group.name].messages
        if not messages:
            continue
        last = messages[-1]
        assert len(last.points) == 1, (f"group '{group.name}': last controller command has "
                                       f"{len(last.points)} points; expected a one-point hold")
        point = last.points[0]
        assert all(v == 0.0 for v in point.velocities), point.velocities
        held = np.array(point.positions)
        now = np.array([measured[j] for j in last.joint_names])
        if np.abs(held - now).max() < 0.05:
            continue
        assert len(messages) >= 2 and messages[-2].joint_names == last.joint_names, (group.name, held, now)
        frozen = _reference_at(messages[-2], _seconds(last.header.stamp))
        assert np.abs(held - frozen).max() < 1e-4, (
            f"group '{group.name}': the hold {held} is neither at the measured position {now} nor at the "
            f"previous command's position {frozen} at the hold's time")


def _assert_no_tracebacks(text: str):
    for marker in ("Traceback", "never retrieved", "Exception in thread"):
        assert marker not in text, f"{marker!r} in the output:\n{text[-4000:]}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_to_bringup_stops_every_node_and_leaves_the_robot_holding(
        signum, ros_graph, ros_env, tmp_path):
    outputs, joint_states = _controller_probe(ros_graph)
    bringup = Bringup(ros_env, tmp_path / "bringup.log", "--checkpoint", "tiny")
    try:
        _wait_for_policy_motion(bringup, outputs)
        pids = bringup.node_pids()
        bringup.process.send_signal(signum)
        code = bringup.wait()
        time.sleep(0.5)  # the last commands are in flight to the probe
    finally:
        bringup.kill_everything()
    output = bringup.output()
    assert code == 0, output[-3000:]
    assert not [name for name, pid in pids.items() if _alive(pid)], f"nodes still running:\n{output[-3000:]}"
    assert "stopping the policy" in output
    _assert_last_command_is_a_hold(outputs, joint_states)
    _assert_no_tracebacks(output)


def test_a_killed_policy_leaves_the_robot_holding_and_bringup_names_it(ros_graph, ros_env, tmp_path):
    outputs, joint_states = _controller_probe(ros_graph)
    bringup = Bringup(ros_env, tmp_path / "bringup.log", "--checkpoint", "tiny")
    try:
        _wait_for_policy_motion(bringup, outputs)
        pids = bringup.node_pids()
        os.kill(pids["policy_node"], signal.SIGKILL)
        code = bringup.wait()
        time.sleep(0.5)
    finally:
        bringup.kill_everything()
    output = bringup.output()
    assert code == 1, output[-3000:]
    assert "policy_node killed by SIGKILL" in output, output[-3000:]
    assert not [name for name, pid in pids.items() if _alive(pid)], f"nodes still running:\n{output[-3000:]}"
    _assert_last_command_is_a_hold(outputs, joint_states)


def test_a_failed_configure_is_an_error_diagnostic_and_bringup_exits_non_zero(ros_graph, ros_env, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    not_a_checkpoint = tmp_path / "dataset"
    not_a_checkpoint.mkdir()
    (not_a_checkpoint / "episodes.json").write_text("[]")
    probe = ros_graph.node("diagnostics_probe")
    diagnostics = Collector(probe, DiagnosticArray, "/diagnostics")
    bringup = Bringup(ros_env, tmp_path / "bringup.log", "--checkpoint", str(not_a_checkpoint))
    try:
        code = bringup.wait(timeout_s=90.0)
    finally:
        bringup.kill_everything()
    output = bringup.output()
    assert code == 1, output[-3000:]
    assert "policy_node exited with status 3" in output, output[-3000:]
    errors = [s for m in diagnostics.messages for s in m.status
              if s.name.startswith("policy_node") and s.level == DiagnosticStatus.ERROR]
    assert errors, f"no ERROR diagnostic from policy_node; got {[(s.name, s.message) for m in diagnostics.messages for s in m.status]}"
    assert "configure failed" in errors[0].message and str(not_a_checkpoint) in errors[0].message, errors[0].message


def test_the_planner_plans_in_the_live_mobile_graph_and_the_policy_follows_its_subtask(
        ros_graph, ros_env, tmp_path):
    """`ki-vla bringup mobile --sim` with a model that can plan: the 3 cameras at 640x480 reach
    the planner (over DDS, in the policy process), it publishes the subtask, and the policy's
    chunks are conditioned on it. Regression: the wrist cameras' frames were mostly lost and
    the planner never planned ("cameras with images newer than sync.max_age_s: [] ...")."""
    from std_msgs.msg import String
    from ros_helpers import train_tiny_planner

    from ki_vla_ros.msg import ActionChunk, Subtask
    from ki_vla_ros.ros.dds import LATCHED_QOS

    task, subtask = "tidy up the table: start with the red block", "move to the red block"
    mobile = load_robot_config("mobile")
    checkpoint = tmp_path / "planner_checkpoint"
    train_tiny_planner(mobile, task, subtask).model.save_pretrained(checkpoint)
    probe = ros_graph.node("planner_probe")
    subtasks = Collector(probe, Subtask, "/ki_vla/subtask")
    chunks = Collector(probe, ActionChunk, "/ki_vla/action_chunk")
    task_pub = probe.create_publisher(String, "/ki_vla/task", LATCHED_QOS)
    log_path = tmp_path / "bringup.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "ki_vla_ros.cli", "bringup", "mobile", "--sim",
                                    "--checkpoint", str(checkpoint)], env=ros_env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 150
            while not any(c.instruction == subtask for c in chunks.messages):
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, (
                    f"no chunk followed the subtask; subtasks {sorted({m.subtask for m in subtasks.messages})}, "
                    f"chunk prompts {sorted({c.instruction for c in chunks.messages})}\n{log_path.read_text()[-3000:]}")
                task_pub.publish(String(data=task))
                time.sleep(0.5)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    assert {m.subtask for m in subtasks.messages} == {subtask}
    assert all(m.task == task for m in subtasks.messages)


def test_the_nodes_stop_when_bringup_itself_is_killed(ros_graph, ros_env, tmp_path):
    """SIGKILL to bringup cannot be handled there; each node gets SIGTERM from the kernel
    (PR_SET_PDEATHSIG) and stops with the robot holding, instead of running on alone."""
    outputs, joint_states = _controller_probe(ros_graph)
    bringup = Bringup(ros_env, tmp_path / "bringup.log", "--checkpoint", "tiny")
    try:
        _wait_for_policy_motion(bringup, outputs)
        pids = bringup.node_pids()
        bringup.process.send_signal(signal.SIGKILL)
        bringup.wait()
        deadline = time.monotonic() + STOP_DEADLINE_S
        while [pid for pid in pids.values() if _alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        bringup.kill_everything()
    assert not [name for name, pid in pids.items() if _alive(pid)], bringup.output()[-3000:]
    _assert_last_command_is_a_hold(outputs, joint_states)
