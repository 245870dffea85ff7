"""Reading and writing rosbag2 bags with rosbags: both storage formats, stamps, bad files."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from rosbags.typesys import get_types_from_msg

from ki_vla_ros.eval.bag_io import (
    ACTION_CHUNK, JOINT_STATE, TWIST, Bag, BagError, BagWriter, make_joint_state, make_twist, ros_duration,
    ros_time)


def write_small_bag(path, storage):
    with BagWriter(path, storage) as writer:
        store = writer.typestore
        writer.add_topic("/joint_states", JOINT_STATE)
        writer.add_topic("/cmd_vel", TWIST)
        writer.add_topic("/ki_vla/action_chunk", ACTION_CHUNK)
        for i in range(5):
            # header stamps 5 ms before the receive time, as a driver's stamps would be
            writer.write("/joint_states", 2_000_000_000 + i * 20_000_000,
                         make_joint_state(store, 1.995 + i * 0.02, ["a", "b"], [i, -i]))
        writer.write("/cmd_vel", 2_050_000_000, make_twist(store, vx=0.25))
        chunk = store.types[ACTION_CHUNK](
            header=store.types["std_msgs/msg/Header"](stamp=ros_time(store, 2.0), frame_id=""),
            start_time=ros_time(store, 2.0), step_duration=ros_duration(store, 0.1),
            action_names=["a", "b"], horizon=2, dim=2, actions=np.arange(4, dtype=np.float32),
            inference_latency=ros_duration(store, 0.03), instruction="wave")
        writer.write("/ki_vla/action_chunk", 2_010_000_000, chunk)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_messages_come_back_in_receive_order_with_header_stamps(tmp_path, storage):
    bag = Bag(write_small_bag(tmp_path / "bag", storage))
    assert bag.topics == {"/joint_states": JOINT_STATE, "/cmd_vel": TWIST, "/ki_vla/action_chunk": ACTION_CHUNK}
    messages = list(bag.messages())
    assert [m.topic for m in messages] == ["/joint_states", "/ki_vla/action_chunk", "/joint_states",
                                           "/joint_states", "/cmd_vel", "/joint_states", "/joint_states"]
    receive = [m.receive_time_s for m in messages]
    assert receive == sorted(receive)
    joint_states = [m for m in messages if m.topic == "/joint_states"]
    assert joint_states[1].stamp_s == pytest.approx(2.015)  # header stamp, not receive time
    assert joint_states[1].receive_time_s == pytest.approx(2.02)
    assert list(joint_states[3].msg.position) == [3.0, -3.0]
    twist = next(m for m in messages if m.topic == "/cmd_vel")
    assert twist.stamp_s == twist.receive_time_s == pytest.approx(2.05)  # no header: receive time
    chunk = next(m for m in messages if m.topic == "/ki_vla/action_chunk").msg
    assert chunk.action_names == ["a", "b"] and list(chunk.actions) == [0, 1, 2, 3]


def test_a_bare_mcap_file_opens_like_the_bag_directory(tmp_path):
    write_small_bag(tmp_path / "bag", "mcap")
    with Bag(tmp_path / "bag" / "bag.mcap") as bag:
        assert bag.message_count() == 7


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_truncated_bag_raises_bag_error_naming_the_bag(tmp_path, storage):
    path = write_small_bag(tmp_path / "bag", storage)
    data_file = next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.raises(BagError) as error:
        bag = Bag(path)
        list(bag.messages())
    assert str(path) in str(error.value) and "truncated or corrupt" in str(error.value)


def test_a_missing_bag_names_the_path(tmp_path):
    with pytest.raises(BagError, match="no such file or directory"):
        Bag(tmp_path / "nowhere")


def test_a_topic_of_another_type_names_topic_type_and_expectation(tmp_path):
    bag = Bag(write_small_bag(tmp_path / "bag", "mcap"))
    with pytest.raises(BagError) as error:
        bag.require_topics({"/cmd_vel": "trajectory_msgs/msg/JointTrajectory"})
    assert "topic '/cmd_vel'" in str(error.value)
    assert "has type geometry_msgs/msg/Twist; expected trajectory_msgs/msg/JointTrajectory" in str(error.value)
    with pytest.raises(BagError, match=r"topic '/odom': not in the bag; .*Topics in the bag: \["):
        bag.require_topics({"/odom": "nav_msgs/msg/Odometry"})


def write_custom_type_bag(path, storage):
    with BagWriter(path, storage) as writer:
        writer.typestore.register(get_types_from_msg("float64 torque\nstring name", "acme_msgs/msg/Gizmo"))
        writer.add_topic("/gizmo", "acme_msgs/msg/Gizmo")
        gizmo = writer.typestore.types["acme_msgs/msg/Gizmo"]
        writer.write("/gizmo", 1_000, gizmo(torque=1.5, name="left"))
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_type_the_bag_defines_itself_decodes(tmp_path, storage):
    bag = Bag(write_custom_type_bag(tmp_path / "bag", storage))
    (message,) = list(bag.messages())
    assert message.msg.torque == 1.5 and message.msg.name == "left"


def test_a_type_nobody_defines_raises_bag_error_naming_topic_and_type(tmp_path):
    path = write_custom_type_bag(tmp_path / "bag", "sqlite3")
    with sqlite3.connect(path / "bag.db3") as db:  # as an older rosbag2 wrote it: no definitions
        db.execute("DELETE FROM message_definitions")
    bag = Bag(path)
    with pytest.raises(BagError) as error:
        list(bag.messages())
    assert "topic '/gizmo'" in str(error.value)
    assert "message type 'acme_msgs/msg/Gizmo' is unknown" in str(error.value)


def test_writer_refuses_to_overwrite_a_bag(tmp_path):
    write_small_bag(tmp_path / "bag", "mcap")
    with pytest.raises(BagError, match="already exists"):
        BagWriter(tmp_path / "bag")
