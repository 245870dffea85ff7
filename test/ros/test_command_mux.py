"""command_mux over real DDS: mode switching by service, timeouts -> hold, bumpless hand-off."""
from __future__ import annotations

import time

import numpy as np
from ros_helpers import Collector, params

from ki_vla_ros.runtime.config import load_robot_config

CONFIG = load_robot_config("single_arm")
ARM = CONFIG.action_group("arm")


class MuxHarness:
    def __init__(self, ros_graph):
        from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from ki_vla_ros.ros.command_mux import CommandMuxNode

        self.graph = ros_graph
        self.mux = ros_graph.add(CommandMuxNode(context=ros_graph.context,
                                                parameter_overrides=params(config="single_arm")))
        self.probe = ros_graph.node("mux_probe")
        self.output = Collector(self.probe, JointTrajectory, ARM.controller_topic)
        self.modes = Collector(self.probe, String, "/ki_vla/mux/mode",
                               QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.joint_pub = self.probe.create_publisher(JointState, CONFIG.joint_states_topic, qos_profile_sensor_data)
        self.teleop = self.probe.create_publisher(JointTrajectory, ARM.teleop_topic, 10)
        self.policy = self.probe.create_publisher(JointTrajectory, ARM.policy_topic, 10)
        self.clients = {m: self.probe.create_client(Trigger, f"/command_mux/{m}") for m in ("teleop", "policy", "hold")}
        self.measured = {j: 0.5 * (CONFIG.joint_limits[j].lower + CONFIG.joint_limits[j].upper) for j in CONFIG.joints}
        ros_graph.wait_for(lambda: all(p.get_subscription_count() > 0 for p in (self.joint_pub, self.teleop, self.policy)),
                           20.0, "command_mux subscriptions")
        ros_graph.wait_for(lambda: all(c.service_is_ready() for c in self.clients.values()), 20.0, "mux services")

    def publish_joint_state(self):
        from sensor_msgs.msg import JointState

        msg = JointState(name=list(self.measured), position=list(self.measured.values()))
        msg.header.stamp = self.probe.get_clock().now().to_msg()
        self.joint_pub.publish(msg)

    def command(self, publisher, offset_rad: float, steps: int = 5):
        """A trajectory for the arm, offset from the measured pose, starting on receipt."""
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        from ki_vla_ros.ros.conversions import s_to_duration

        msg = JointTrajectory(joint_names=list(ARM.joints))
        for k in range(steps):
            msg.points.append(JointTrajectoryPoint(
                positions=[self.measured[j] + offset_rad for j in ARM.joints],
                time_from_start=s_to_duration(0.1 * (k + 1))))
        publisher.publish(msg)

    def switch(self, mode: str) -> str:
        from std_srvs.srv import Trigger

        future = self.clients[mode].call_async(Trigger.Request())
        self.graph.wait_for(future.done, 10.0, f"/command_mux/{mode} reply")
        assert future.result().success
        return future.result().message

    def feed(self, seconds: float, publisher=None, offset_rad: float = 0.0):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.publish_joint_state()
            if publisher is not None:
                self.command(publisher, offset_rad)
            time.sleep(0.05)


def _positions(msg):
    return np.array([p.positions for p in msg.points])


def test_mode_switching_by_service_forwards_only_the_active_source(ros_graph):
    h = MuxHarness(ros_graph)
    ros_graph.wait_for(lambda: h.modes.messages and h.modes.messages[-1].data == "policy", 10.0, "latched mode")
    h.feed(0.5, h.teleop, 0.01)  # initial mode is policy: teleop is ignored
    assert len(h.output) == 0
    h.feed(0.5, h.policy, 0.01)
    assert len(h.output) > 0
    h.feed(0.4 * CONFIG.mux.policy_timeout_s)  # the last forwarded policy commands arrive (no hold due yet)
    assert "teleop" in h.switch("teleop")
    ros_graph.wait_for(lambda: h.modes.messages[-1].data == "teleop", 10.0, "mode teleop on the latched topic")
    before = len(h.output)
    h.feed(0.5, h.policy, 0.02)  # policy is ignored now, except the one hold sent on switching
    assert len(h.output) - before <= 1
    h.feed(0.5, h.teleop, 0.02)
    assert len(h.output) - before > 3
    h.switch("hold")
    ros_graph.wait_for(lambda: h.modes.messages[-1].data == "hold", 10.0, "mode hold")


def test_a_silent_teleop_source_leads_to_a_hold_at_the_measured_position(ros_graph):
    h = MuxHarness(ros_graph)
    h.switch("teleop")
    h.feed(0.5, h.teleop, 0.02)
    # Let the last forwarded teleop commands arrive before counting them (well inside the
    # timeout, so no hold is due yet); otherwise one in flight is counted as a hold.
    h.feed(0.4 * CONFIG.mux.teleop_timeout_s)
    forwarded = len(h.output)
    assert forwarded > 0
    h.measured = {j: q + 0.01 for j, q in h.measured.items()}  # the arm moved a bit meanwhile
    h.feed(CONFIG.mux.teleop_timeout_s + 0.5)  # teleop falls silent; joint states keep coming
    holds = h.output.messages[forwarded:]
    assert len(holds) == 1, f"expected one hold command, got {len(holds)}"
    hold = holds[0]
    assert len(hold.points) == 1
    np.testing.assert_allclose(hold.points[0].positions, [h.measured[j] for j in ARM.joints], atol=1e-9)
    assert all(v == 0.0 for v in hold.points[0].velocities)


def test_handing_off_to_a_policy_that_starts_away_from_the_arm_is_bumpless(ros_graph):
    h = MuxHarness(ros_graph)
    h.feed(0.3)
    start = len(h.output)
    h.feed(0.3, h.policy, offset_rad=0.3)  # the policy's first command is 0.3 rad away from the arm
    first = h.output.messages[start]
    positions = _positions(first)
    measured = np.array([h.measured[j] for j in ARM.joints])
    np.testing.assert_allclose(positions[0], measured, atol=1e-9)  # starts at the measured state
    steps = np.abs(np.diff(positions, axis=0)).max()
    assert steps <= CONFIG.mux.max_step_rad + 1e-9, steps
    np.testing.assert_allclose(positions[-1], measured + 0.3, atol=1e-9)  # and still gets there
