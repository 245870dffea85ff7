"""policy_node over real DDS when things go wrong after it was running:

- diagnostics are OK only while it commands; when it stops commanding they say why and name
  the input at fault (stale joint-state stamps, a stopped camera, an undecodable image);
- instructions are checked when they arrive (empty, over the prompt budget): ERROR, hold,
  and the next usable instruction resumes;
- lifecycle deactivate -> cleanup -> configure -> activate leaves one publisher and one
  subscription per topic, so every message arrives once.
"""
from __future__ import annotations

import time

import pytest
from ros_helpers import Collector, ObservationPublisher, params

from ki_vla_ros.runtime.config import load_robot_config

CONFIG = load_robot_config("single_arm")


def _setup(ros_graph):
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import String

    from ki_vla_ros.ros.dds import LATCHED_QOS
    from trajectory_msgs.msg import JointTrajectory

    from ki_vla_ros.msg import ActionChunk
    from ki_vla_ros.ros.policy_node import PolicyNode

    policy = ros_graph.add(PolicyNode(context=ros_graph.context,
                                      parameter_overrides=params(config="single_arm", checkpoint="tiny")))
    probe = ros_graph.node("fault_probe")
    probe.chunks = Collector(probe, ActionChunk, "/ki_vla/action_chunk")
    probe.arm = Collector(probe, JointTrajectory, CONFIG.action_group("arm").policy_topic)
    probe.diagnostics = Collector(probe, DiagnosticArray, "/diagnostics")
    probe.instruction = probe.create_publisher(String, "/ki_vla/instruction", LATCHED_QOS)
    observations = ObservationPublisher(probe, CONFIG)
    ros_graph.wait_for(lambda: observations.matched() and probe.instruction.get_subscription_count() > 0,
                       20.0, "policy_node subscriptions")
    return policy, probe, observations


def _latest_status(probe, after_s: float):
    for t, msg in zip(reversed(probe.diagnostics.times), reversed(probe.diagnostics.messages)):
        if t < after_s:
            return None
        for status in msg.status:
            if status.name.endswith(": policy"):
                return status
    return None


def _publish_until(observations, condition, what, timeout_s=30.0, period_s=0.1, **kwargs):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        observations.publish(**kwargs)
        time.sleep(period_s)


def _wait_for_status(probe, observations, level, text, what, **kwargs):
    """Keep publishing (kwargs) until a policy diagnostic newer than now has `level` and `text`."""
    from diagnostic_msgs.msg import DiagnosticStatus

    t0 = time.monotonic()
    seen = []

    def matches():
        status = _latest_status(probe, t0)
        if status is not None and (not seen or seen[-1] != status.message):
            seen.append(status.message)
        return status is not None and status.level == level and text in status.message

    try:
        _publish_until(observations, matches, what, timeout_s=20.0, **kwargs)
    except AssertionError:
        names = {DiagnosticStatus.OK: "OK", DiagnosticStatus.WARN: "WARN", DiagnosticStatus.ERROR: "ERROR"}
        raise AssertionError(f"{what}: no {names[level]} diagnostic containing {text!r}; saw {seen}")
    return _latest_status(probe, t0)


@pytest.mark.parametrize("fault, expected", [
    ("stale_joint_stamps", "input 'joint_states' (/joint_states): stamps are 5."),
    ("camera_stopped", "input 'base' ("),
    ("bad_image", "input 'base' ("),
])
def test_when_the_node_stops_commanding_its_diagnostics_say_why_and_name_the_input(ros_graph, fault, expected):
    from diagnostic_msgs.msg import DiagnosticStatus

    policy, probe, observations = _setup(ros_graph)
    _wait_for_status(probe, observations, DiagnosticStatus.OK, "running", "commanding first")
    kwargs = {}
    if fault == "stale_joint_stamps":
        kwargs["joint_stamp_offset_s"] = -5.0
    elif fault == "camera_stopped":
        kwargs["cameras"] = False
    elif fault == "bad_image":
        observations.encoding = "16UC1"
    status = _wait_for_status(probe, observations, DiagnosticStatus.ERROR, expected, f"the {fault} diagnostic",
                              **kwargs)
    assert status.message.startswith("not commanding"), status.message
    if fault == "camera_stopped":
        assert "no message" in status.message and "wrist" not in status.message, status.message
    if fault == "bad_image":
        assert "16UC1" in status.message and "joint_states" not in status.message, status.message
    commands = len(probe.arm)
    for _ in range(5):
        observations.publish(**kwargs)
        time.sleep(0.1)
    assert len(probe.arm) == commands, "the node commanded from bad input"


@pytest.mark.parametrize("instruction, expected", [
    ("x " * 50_000, "has 99999 characters"),
    ("pick " * 300, "prompt tokens"),
    ("   ", "is empty"),
], ids=["100kB", "over_token_budget", "empty"])
def test_an_unusable_instruction_is_an_error_and_holds_until_a_usable_one_arrives(ros_graph, instruction, expected):
    from diagnostic_msgs.msg import DiagnosticStatus
    from std_msgs.msg import String

    policy, probe, observations = _setup(ros_graph)
    _wait_for_status(probe, observations, DiagnosticStatus.OK, "running", "commanding first")
    probe.instruction.publish(String(data=instruction))
    status = _wait_for_status(probe, observations, DiagnosticStatus.ERROR, expected, "the rejected instruction")
    assert "instruction rejected" in status.message and len(status.message) < 400, status.message
    commands = len(probe.arm)
    for _ in range(10):
        observations.publish()
        time.sleep(0.1)
    assert len(probe.arm) == commands, "the node kept commanding under a rejected instruction"
    probe.instruction.publish(String(data="move to the blue block"))
    _publish_until(observations, lambda: any(c.instruction == "move to the blue block" for c in probe.chunks.messages)
                   and len(probe.arm) > commands, "commands under the new instruction")


def test_cleanup_and_configure_again_leave_one_publisher_and_one_subscription_per_topic(ros_graph):
    policy, probe, observations = _setup(ros_graph)
    _publish_until(observations, lambda: len(probe.chunks) > 0, "a first chunk")
    for transition in (policy.trigger_deactivate, policy.trigger_cleanup, policy.trigger_configure,
                       policy.trigger_activate):
        transition()
    assert policy.state == "waiting"

    def endpoints(kind, topic):
        infos = getattr(probe, f"get_{kind}_info_by_topic")(topic)
        return [i for i in infos if i.node_name == "policy_node"]

    ros_graph.wait_for(lambda: len(endpoints("publishers", "/ki_vla/action_chunk")) == 1
                       and len(endpoints("subscriptions", CONFIG.joint_states_topic)) == 1, 5.0,
                       "one action_chunk publisher and one joint_states subscription")
    time.sleep(0.5)
    for kind, topic in (("publishers", "/ki_vla/action_chunk"),
                        ("publishers", CONFIG.action_group("arm").policy_topic),
                        ("subscriptions", CONFIG.joint_states_topic),
                        ("subscriptions", CONFIG.camera("base").topic)):
        assert len(endpoints(kind, topic)) == 1, (kind, topic, endpoints(kind, topic))
    counts = policy.loop.counters.sync_results
    _publish_until(observations, lambda: len(probe.chunks) > 3, "chunks after reconfiguring")
    assert policy.loop.counters.sync_results.get("rejected", 0) == counts.get("rejected", 0), \
        "messages arrived twice (out-of-order rejections) after reconfiguring"
