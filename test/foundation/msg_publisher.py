"""Child process for test_messages: publish one ActionChunk and one Subtask, then exit.

Waits for the test's subscriptions to match before publishing, so nothing is lost to
discovery, and keeps spinning until the test says it received both (or a deadline).
"""
import sys

import rclpy
from builtin_interfaces.msg import Duration, Time
from std_msgs.msg import Empty, Header

from ki_vla_ros.msg import ActionChunk, Subtask
from ki_vla_ros.ros.graph import spin_until, wait_for_subscribers


def expected_action_chunk() -> ActionChunk:
    msg = ActionChunk()
    msg.header = Header(stamp=Time(sec=1_700_000_000, nanosec=123_456_789), frame_id="base_link")
    msg.start_time = Time(sec=1_700_000_000, nanosec=223_456_789)
    msg.step_duration = Duration(sec=0, nanosec=20_000_000)
    msg.action_names = ["joint_1", "joint_2", "gripper"]
    msg.horizon = 4
    msg.dim = 3
    msg.actions = [0.5 * i - 1.25 for i in range(12)]
    msg.inference_latency = Duration(sec=0, nanosec=48_500_000)
    msg.instruction = "pick up the red block"
    return msg


def expected_subtask() -> Subtask:
    msg = Subtask()
    msg.header = Header(stamp=Time(sec=1_700_000_001, nanosec=5), frame_id="head_camera")
    msg.task = "tidy the table"
    msg.subtask = "move to the red block"
    msg.sequence = 7
    msg.generation_latency = Duration(sec=1, nanosec=250_000_000)
    return msg


def main() -> int:
    rclpy.init()
    node = rclpy.create_node("ki_vla_msg_publisher")
    chunk_pub = node.create_publisher(ActionChunk, "/ki_vla/action_chunk", 10)
    subtask_pub = node.create_publisher(Subtask, "/ki_vla/subtask", 10)
    done = []
    node.create_subscription(Empty, "/test/done", lambda _: done.append(True), 10)
    wait_for_subscribers(node, chunk_pub, timeout_s=20.0)
    wait_for_subscribers(node, subtask_pub, timeout_s=20.0)
    chunk_pub.publish(expected_action_chunk())
    subtask_pub.publish(expected_subtask())
    print("published ActionChunk and Subtask", flush=True)
    spin_until(node, lambda: bool(done), 20.0, "the test's done signal")
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
