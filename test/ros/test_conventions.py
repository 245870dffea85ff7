"""ROS conventions over real DDS: sensor QoS a reliable subscriber matches, latched instructions,
plain diagnostic values."""
from __future__ import annotations

import json

import pytest
from ros_helpers import Collector, params


def test_sim_joint_states_reach_a_reliable_subscriber_like_robot_state_publisher(ros_graph):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    from ki_vla_ros.ros.sim_robot import SimRobotNode

    probe = ros_graph.node("reliable_probe")
    reliable = Collector(probe, JointState, "/joint_states",
                         QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    ros_graph.add(SimRobotNode(context=ros_graph.context,
                               parameter_overrides=params(config="single_arm", camera_rate_hz=1.0)))
    ros_graph.wait_for(lambda: len(reliable) >= 5, 20.0, "5 joint states on a reliable subscription")
    publishers = probe.get_publishers_info_by_topic("/joint_states")
    assert [p.qos_profile.reliability for p in publishers] == [ReliabilityPolicy.RELIABLE]


def test_a_node_started_after_the_instruction_was_sent_still_gets_it(ros_graph):
    """The instruction is latched: sim_robot, started after the last instruction was published,
    takes its target from it (so do the policy node and, for /ki_vla/task, the planner)."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from ki_vla_ros.ros.sim_robot import SimRobotNode

    probe = ros_graph.node("instruction_probe")
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    instruction = probe.create_publisher(String, "/ki_vla/instruction", latched)
    status = Collector(probe, String, "/sim_robot/status")
    sim = SimRobotNode(context=ros_graph.context, parameter_overrides=params(config="single_arm", camera_rate_hz=1.0))
    block = sim.robot.scene.names[0]
    sim.destroy_node()  # only to learn the block names; the instruction goes out before the next one starts
    instruction.publish(String(data=f"pick up the {block}"))
    ros_graph.add(SimRobotNode(context=ros_graph.context,
                               parameter_overrides=params(config="single_arm", camera_rate_hz=1.0)))
    ros_graph.wait_for(lambda: any(json.loads(m.data)["target"] == block for m in status.messages), 20.0,
                       f"sim_robot status with target {block!r} from the latched instruction")


def test_diagnostic_values_are_plain_strings_not_python_reprs():
    from ki_vla_ros.ros.conversions import key_values

    values = key_values({"state": "running", "chunks": 3, "rate_hz": 1.25, "reached": True, "ok": False})
    assert [(v.key, v.value) for v in values] == [
        ("state", "running"), ("chunks", "3"), ("rate_hz", "1.25"), ("reached", "true"), ("ok", "false")]
    for bad in ({"a": 1}, [1, 2], None, ValueError("x")):
        with pytest.raises(TypeError, match="diagnostic value 'x' is a"):
            key_values({"x": bad})


@pytest.mark.parametrize("twist_type", ["twist_stamped", "twist"])
def test_base_commands_flow_as_the_configured_twist_type_through_mux_to_the_sim(ros_graph, tmp_path, twist_type):
    """policy topic -> command_mux -> /cmd_vel -> sim_robot, all as TwistStamped (the default for
    a base group, what Jazzy base controllers take) or as Twist (the shipped mobile config)."""
    import time

    from config_files import config_file
    from geometry_msgs.msg import Twist, TwistStamped
    from nav_msgs.msg import Odometry

    from ki_vla_ros.ros.command_mux import CommandMuxNode
    from ki_vla_ros.ros.sim_robot import SimRobotNode
    from ki_vla_ros.runtime.config import load_robot_config

    def set_twist_type(document):
        base = document["/**"]["ros__parameters"]["action_groups"]["base"]
        base.pop("twist_type", None)
        if twist_type == "twist":
            base["twist_type"] = "twist"

    path = config_file(tmp_path, "mobile", set_twist_type)
    group = load_robot_config(path).base_group
    msg_type = TwistStamped if twist_type == "twist_stamped" else Twist
    assert group.stamped == (msg_type is TwistStamped)

    probe = ros_graph.node("twist_probe")
    out = Collector(probe, msg_type, group.controller_topic)
    odom = Collector(probe, Odometry, "/odom", 1)
    command = probe.create_publisher(msg_type, group.policy_topic, 10)
    ros_graph.add(SimRobotNode(context=ros_graph.context, parameter_overrides=params(config=str(path),
                                                                                       camera_rate_hz=0.5)))
    ros_graph.add(CommandMuxNode(context=ros_graph.context, parameter_overrides=params(config=str(path))))
    ros_graph.wait_for(lambda: command.get_subscription_count() > 0 and len(odom) > 0, 20.0, "mux and sim")
    deadline = time.monotonic() + 20.0
    while not (len(out) >= 3 and odom.messages[-1].twist.twist.linear.x > 0.05):
        assert time.monotonic() < deadline, f"{len(out)} {msg_type.__name__} on {group.controller_topic}"
        msg = Twist()
        msg.linear.x = 0.2
        if msg_type is TwistStamped:
            msg = TwistStamped(twist=msg)
            msg.header.stamp = probe.get_clock().now().to_msg()
        command.publish(msg)
        time.sleep(0.05)
    forwarded = [m for m in out.messages if (m.twist if msg_type is TwistStamped else m).linear.x > 0]
    assert forwarded
    if msg_type is TwistStamped:
        assert forwarded[-1].header.frame_id == "base_link" and forwarded[-1].header.stamp.sec > 0
