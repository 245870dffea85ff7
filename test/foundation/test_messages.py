"""ActionChunk and Subtask cross a process boundary over real DDS with every field intact."""
import subprocess
import sys
from pathlib import Path

from rclpy.qos import QoSProfile

HERE = Path(__file__).resolve().parent


def _load_expected():
    sys.path.insert(0, str(HERE))
    try:
        import msg_publisher
    finally:
        sys.path.remove(str(HERE))
    return msg_publisher.expected_action_chunk(), msg_publisher.expected_subtask()


def test_action_chunk_and_subtask_arrive_from_another_process_with_every_field_equal(
    rclpy_context, ros_env
):
    import rclpy
    from std_msgs.msg import Empty

    from ki_vla_ros.msg import ActionChunk, Subtask
    from ki_vla_ros.ros.graph import spin_until, wait_for_subscribers

    expected_chunk, expected_subtask = _load_expected()
    node = rclpy.create_node("ki_vla_msg_listener", context=rclpy_context)
    received = {}
    node.create_subscription(ActionChunk, "/ki_vla/action_chunk", lambda m: received.setdefault("chunk", m), 10)
    node.create_subscription(Subtask, "/ki_vla/subtask", lambda m: received.setdefault("subtask", m), 10)
    done_pub = node.create_publisher(Empty, "/test/done", QoSProfile(depth=1))

    child = subprocess.Popen(
        [sys.executable, str(HERE / "msg_publisher.py")],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        spin_until(node, lambda: len(received) == 2, 30.0, "ActionChunk and Subtask from the child")
        wait_for_subscribers(node, done_pub)
        done_pub.publish(Empty())
        assert child.wait(timeout=30) == 0, child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()
        node.destroy_node()

    chunk, subtask = received["chunk"], received["subtask"]
    # Generated messages compare field by field with ==; check explicitly too so a
    # failure names the field.
    for field in ActionChunk.get_fields_and_field_types():
        assert getattr(chunk, field) == getattr(expected_chunk, field), field
    for field in Subtask.get_fields_and_field_types():
        assert getattr(subtask, field) == getattr(expected_subtask, field), field
    assert chunk == expected_chunk and subtask == expected_subtask
    assert len(chunk.actions) == chunk.horizon * chunk.dim
