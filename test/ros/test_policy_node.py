"""policy_node over real DDS: synchronized observations in, chunks and trajectories out;
bad observations produce no motion, a diagnostic naming the problem, and a node that
keeps running."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config

CONFIG = load_robot_config("single_arm")


def _setup(ros_graph):
    from ros_helpers import Collector, ObservationPublisher, params
    from diagnostic_msgs.msg import DiagnosticArray
    from trajectory_msgs.msg import JointTrajectory

    from ki_vla_ros.msg import ActionChunk
    from ki_vla_ros.ros.policy_node import PolicyNode

    policy = ros_graph.add(PolicyNode(context=ros_graph.context,
                                      parameter_overrides=params(config="single_arm", checkpoint="tiny")))
    assert policy.state == "waiting", "policy node did not configure and activate"
    probe = ros_graph.node("probe")
    chunks = Collector(probe, ActionChunk, "/ki_vla/action_chunk")
    arm = Collector(probe, JointTrajectory, CONFIG.action_group("arm").policy_topic)
    gripper = Collector(probe, JointTrajectory, CONFIG.action_group("gripper").policy_topic)
    diagnostics = Collector(probe, DiagnosticArray, "/diagnostics")
    observations = ObservationPublisher(probe, CONFIG)
    ros_graph.wait_for(observations.matched, 20.0, "policy_node to subscribe to cameras and joint states")
    return policy, observations, chunks, arm, gripper, diagnostics


def _errors(diagnostics) -> str:
    """The newest error of each source (error.<input>) in the latest policy diagnostic."""
    for msg in reversed(diagnostics.messages):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "last_error" in values:
                return "\n".join(v for k, v in values.items() if k.startswith("error."))
    return ""


def _publish_until(ros_graph, observations, condition, what, timeout_s=30.0, **kwargs):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        observations.publish(**kwargs)
        time.sleep(0.1)


def _to_s(t):
    return t.sec + t.nanosec * 1e-9


def test_a_synchronized_observation_yields_a_chunk_and_trajectories_with_controller_timing(ros_graph):
    policy, observations, chunks, arm, gripper, _ = _setup(ros_graph)
    _publish_until(ros_graph, observations, lambda: len(arm) > 0 and len(gripper) > 0 and len(chunks) > 0,
                   "a chunk and trajectories")
    chunk = chunks.messages[0]
    # Chunk: stamped with its observation; step 0 is due one step later (actions are the
    # targets one step after the observation, as in the training data).
    assert abs(_to_s(chunk.start_time) - _to_s(chunk.header.stamp) - CONFIG.chunk.step_duration_s) < 1e-6
    assert chunk.horizon == CONFIG.chunk.horizon_steps and chunk.dim == CONFIG.action_dim
    assert list(chunk.action_names) == list(CONFIG.action_names)
    assert len(chunk.actions) == chunk.horizon * chunk.dim
    assert all(math.isfinite(a) for a in chunk.actions)
    assert chunk.instruction == CONFIG.default_instruction
    assert abs(_to_s(chunk.step_duration) - CONFIG.chunk.step_duration_s) < 1e-9
    assert _to_s(chunk.inference_latency) > 0
    # Trajectory: header.stamp = absolute time of the first kept step (a step of the chunk at
    # or after the time it was executed), time_from_start = k * step duration.
    trajectory = arm.messages[0]
    dt = CONFIG.chunk.step_duration_s
    first_step = (_to_s(trajectory.header.stamp) - _to_s(chunk.start_time)) / dt
    assert first_step >= 0 and abs(first_step - round(first_step)) < 1e-6, first_step
    assert list(trajectory.joint_names) == list(CONFIG.action_group("arm").joints)
    assert len(trajectory.points) == CONFIG.chunk.horizon_steps - round(first_step)
    for k, point in enumerate(trajectory.points):
        assert abs(_to_s(point.time_from_start) - k * dt) < 1e-6
        assert len(point.positions) == len(point.velocities) == 7
    assert list(gripper.messages[0].joint_names) == ["panda_finger_joint1"]
    # Every commanded position respects the configured joint limits.
    for point in trajectory.points:
        for name, q in zip(trajectory.joint_names, point.positions):
            limits = CONFIG.joint_limits[name]
            assert limits.lower - 1e-9 <= q <= limits.upper + 1e-9


@pytest.mark.parametrize("problem, expected_error", [
    ("stale", "max_age_s"),
    ("nan", "panda_joint3"),
    ("missing_joint", "panda_joint7"),
    ("encoding", "16UC1"),
])
def test_bad_observations_produce_no_motion_and_a_diagnostic_and_the_node_recovers(
        ros_graph, problem, expected_error):
    policy, observations, chunks, arm, gripper, diagnostics = _setup(ros_graph)
    kwargs = {}
    if problem == "stale":
        observations.stamp_offset_s = -1.0  # one second old: older than sync.max_age_s (0.3 s)
    elif problem == "nan":
        kwargs["positions"] = dict(observations.positions, panda_joint3=float("nan"))
    elif problem == "missing_joint":
        kwargs["names"] = [j for j in CONFIG.joints if j != "panda_joint7"]
    elif problem == "encoding":
        observations.encoding = "16UC1"
    _publish_until(ros_graph, observations, lambda: expected_error in _errors(diagnostics),
                   f"a diagnostic naming {expected_error!r}", **kwargs)
    for _ in range(5):  # keep sending the bad input a little longer
        observations.publish(**kwargs)
        time.sleep(0.1)
    assert len(arm) == 0 and len(gripper) == 0, "a bad observation produced a motion command"
    assert len(chunks) == 0

    # Good observations again: the node is alive and acts.
    observations.stamp_offset_s, observations.encoding = 0.0, "rgb8"
    _publish_until(ros_graph, observations, lambda: len(arm) > 0, "a trajectory after recovery")
    assert np.all(np.isfinite(arm.messages[-1].points[0].positions))
