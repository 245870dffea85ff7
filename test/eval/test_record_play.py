"""`ki-vla record` and `ki-vla play` on real DDS (loopback, a domain per test)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from episode_bags import CONFIG_PATH, arm_config, commanded_actions
from ki_vla_ros.eval.bag_io import JOINT_STATE, STRING, Bag, BagWriter, make_joint_state, make_string
from ki_vla_ros.eval.run import TrajectoryOraclePolicy, evaluate_bags

HERE = Path(__file__).resolve().parent
CONFIG = arm_config()


def start(args, env):
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def stop(process, sig=signal.SIGINT, timeout_s=20.0, lines=None):
    """Signal, wait (kill after timeout_s), return the output: read here, or by `lines`' thread."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        out = process.communicate(timeout=timeout_s)[0] if lines is None else process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out = process.communicate()[0] if lines is None else process.wait()
    return out if lines is None else lines.text()


SENSOR_TOPICS = ("/joint_states", "/cameras/base/image_raw", "/cameras/wrist/image_raw/compressed")


class OutputLines:
    """Collects a child process's output lines on a thread, so a test can wait for one."""

    def __init__(self, process):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in list(self.lines)):
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.text()[-3000:]}"
            time.sleep(0.05)

    def text(self) -> str:
        self._thread.join(timeout=10.0)
        return "".join(self.lines)


def test_record_on_the_live_sim_graph_then_eval_bag_round_trips(tmp_path, ros_env):
    bag_path = tmp_path / "recorded"
    sim = start(["-m", "ki_vla_ros.ros.sim_robot", "--ros-args", "-p", f"config:={CONFIG_PATH}"], ros_env)
    recorder = start(["-m", "ki_vla_ros.cli", "record", "--config", str(CONFIG_PATH), str(bag_path),
                      "--storage", "sqlite3"], ros_env)
    lines = OutputLines(recorder)
    try:
        # Sensor data flows into the bag before the commands start (discovery can take seconds).
        for topic in SENSOR_TOPICS:
            lines.wait_for(f"first message on {topic}", timeout_s=60.0)
        # publishes once sim_robot and the recorder both subscribe, exits when all is acked
        commands = subprocess.run([sys.executable, str(HERE / "command_publisher.py"), str(CONFIG_PATH),
                                   "--duration", "2.5", "--period", "0.3", "--subscribers", "2"],
                                  env=ros_env, capture_output=True, text=True, timeout=60)
        assert commands.returncode == 0, commands.stderr[-3000:]
        published = json.loads(commands.stdout.strip().splitlines()[-1])
    finally:
        recorder_out = stop(recorder, lines=lines)
        sim_out = stop(sim)
    assert recorder.returncode == 0, recorder_out[-3000:]
    assert "wrote" in recorder_out, recorder_out[-3000:]

    with Bag(bag_path) as bag:
        for topic, count in published.items():  # nothing that was sent is missing
            assert bag.topic_count(topic) == count, (topic, recorder_out, sim_out[-2000:])
        for topic in SENSOR_TOPICS:
            assert bag.topic_count(topic) >= 3, (topic, bag.topics)
        first = next(bag.messages(["/arm_controller/joint_trajectory"])).msg
    expected = commanded_actions(CONFIG, first.header.stamp.sec + first.header.stamp.nanosec * 1e-9
                                 + 0.1 * np.arange(len(first.points)))[:, :3]
    assert np.array_equal(np.array([p.positions for p in first.points]), expected)  # exact bytes

    # the end-of-recording table: per topic count, rate, longest gap; sensors also stamp gaps
    with Bag(bag_path) as bag:
        table = {line.split()[-1]: line.split() for line in recorder_out.splitlines()
                 if line.split() and line.split()[-1] in bag.topics}
        for topic in bag.topics:
            assert int(table[topic][0]) == bag.topic_count(topic), (topic, recorder_out)
    for topic in SENSOR_TOPICS:
        count, rate_hz, max_gap_ms, gaps, missing = table[topic][:5]
        assert float(rate_hz) > 0 and float(max_gap_ms) > 0 and gaps.isdigit() and missing.isdigit(), table[topic]
    assert "JointState, reliable, volatile, depth 1000)" in recorder_out
    # the sim publishes every controller tick, reliably: the stamps have no hole
    assert table["/joint_states"][3:5] == ["0", "0"], recorder_out[-3000:]  # /joint_states, from the sim's reliable publisher

    oracle = TrajectoryOraclePolicy(CONFIG, lambda times: commanded_actions(CONFIG, times))
    report = evaluate_bags([bag_path], CONFIG, oracle, tmp_path / "report", progress=False, plots=False)
    assert report["totals"]["bags_ok"] == 1, report["failed_bags"]
    assert report["totals"]["windows"] >= 2
    assert report["overall"]["compared"] > 0
    # float64 seconds of wall time resolve ~0.2 us: errors of 1e-8 of a joint range, not 0
    assert report["overall"]["mae_normalized"] < 1e-6


def test_recording_stats_count_the_messages_missing_from_a_sensor_topic_and_warn():
    """Stamps every 20 ms with two holes (one and three messages missing) -> 2 gaps, 4 missing,
    and a WARNING naming the topic; a command topic (no steady rate) is not judged."""
    from ki_vla_ros.ros.recorder import TopicStats, format_stats

    from ki_vla_ros.eval.bag_io import make_typestore

    store = make_typestore()
    joints = TopicStats(sensor=True)
    ticks = [k for k in range(50) if k not in (10, 30, 31, 32)]
    for k in ticks:
        stamp_s = 100.0 + 0.02 * k
        data = bytes(store.serialize_cdr(make_joint_state(store, stamp_s, ["a"], [0.0]), JOINT_STATE))
        joints.add(int(stamp_s * 1e9) + 1_000_000, data)
    commands = TopicStats(sensor=False)
    for k in range(3):
        commands.add(int((100.0 + 0.5 * k) * 1e9), b"\x00\x01\x00\x00")
    summary = joints.summary()
    assert summary["count"] == 46 and summary["gaps"] == 2 and summary["missing"] == 4
    assert abs(summary["period_ms"] - 20.0) < 1e-6 and abs(summary["max_gap_ms"] - 80.0) < 1e-3
    assert commands.summary()["missing"] is None and abs(commands.summary()["rate_hz"] - 2.0) < 1e-9
    lines = format_stats({"/joint_states": joints, "/arm/cmd": commands})
    assert lines[1].split() == ["3", "2.00", "500.0", "-", "-", "/arm/cmd"]
    assert lines[2].split()[3:] == ["2", "4", "/joint_states"]
    assert lines[-1].startswith("WARNING: /joint_states: about 4 messages missing (2 gaps")
    assert len(lines) == 4


def test_play_republishes_in_order_with_the_recorded_spacing(tmp_path, ros_env, rclpy_context):
    from rclpy.node import Node
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from ki_vla_ros.ros.graph import GraphTimeout, spin_until

    bag_path = tmp_path / "bag"
    start_ns, period_ns, count = 5_000_000_000, 50_000_000, 21  # 20 Hz for 1 s
    with BagWriter(bag_path, "mcap") as writer:
        writer.add_topic("/joint_states", JOINT_STATE)
        writer.add_topic("/ki_vla/instruction", STRING)
        writer.write("/ki_vla/instruction", start_ns, make_string(writer.typestore, "wave"))
        for i in range(count):
            t_ns = start_ns + i * period_ns
            writer.write("/joint_states", t_ns, make_joint_state(writer.typestore, t_ns * 1e-9, ["j"], [float(i)]))

    node = Node("play_listener", context=rclpy_context)
    received, instructions, clocks = [], [], []
    node.create_subscription(JointState, "/joint_states",
                             lambda m: received.append((time.monotonic(), m.position[0],
                                                        m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)), 100)
    node.create_subscription(String, "/ki_vla/instruction", lambda m: instructions.append(m.data), 10)
    node.create_subscription(Clock, "/clock", lambda m: clocks.append(m.clock.sec + m.clock.nanosec * 1e-9), 100)
    player = start(["-m", "ki_vla_ros.cli", "play", str(bag_path), "--clock", "--wait-for-subscribers", "30"],
                   ros_env)
    try:
        spin_until(node, lambda: len(received) == count, 40.0, f"{count} replayed joint states")
        player.wait(timeout=15.0)  # at the end of the bag the player exits by itself
    except (GraphTimeout, subprocess.TimeoutExpired):
        pass  # reported below, with what did arrive and what the player said
    finally:
        out = stop(player)  # only if it is still running
        node.destroy_node()
    assert len(received) == count, (f"received {[v for _, v, _ in received]}, instructions {instructions}, "
                                    f"player output:\n{out[-2000:]}")
    assert player.returncode == 0, out
    assert "acknowledged" not in out, out  # the player waited until the listener had everything
    assert instructions == ["wave"]
    assert [value for _, value, _ in received] == list(range(count))  # in order, none lost
    assert [stamp for _, _, stamp in received] == pytest.approx([(start_ns + i * period_ns) * 1e-9
                                                                 for i in range(count)])  # stamps untouched
    gaps = np.diff([t for t, _, _ in received])
    assert np.median(gaps) == pytest.approx(0.05, abs=0.01)
    assert received[-1][0] - received[0][0] == pytest.approx(1.0, abs=0.15)
    assert clocks and clocks == sorted(clocks)
    assert 5.0 <= clocks[0] and clocks[-1] <= 6.0 + 1e-9
