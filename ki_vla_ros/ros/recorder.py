"""`ki-vla record`: the configured topics into a rosbag2 bag, byte for byte.

    ki-vla record --config single_arm episode_07 [--storage mcap|sqlite3] [--duration 30]

What is recorded (from the robot config): every camera topic, the joint states, odometry
(mobile), per action group its controller_topic, policy_topic and teleop_topic, plus
/ki_vla/action_chunk, /ki_vla/instruction and /ki_vla/subtask -- everything the replay
evaluator and the training datasets read.

How, like `ros2 bag record` (which is not installable here):
- raw subscriptions (rclpy raw=True): the CDR bytes as received go into the bag unchanged;
  the bag timestamp is the receive time from the middleware (MessageInfo), so the replay
  sees the same arrival order and delays as the live node did.
- a topic is subscribed once a publisher for it appears, with QoS matched to the
  publishers: reliable only if every publisher is reliable (a reliable subscription
  never matches a best-effort camera driver), transient-local if all are (latched topics).
- SIGINT / SIGTERM stop spinning, take whatever the middleware already holds for us
  (a final drain), and close the bag: the MCAP summary / sqlite index is written and no
  message already received is lost. A second signal while draining exits at once.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from ki_vla_ros.eval.bag_io import (
    ACTION_CHUNK, COMPRESSED_IMAGE, IMAGE, JOINT_STATE, JOINT_TRAJECTORY, ODOMETRY, STRING, SUBTASK,
    TWIST, BagWriter)
from ki_vla_ros.eval.commands import add_record_arguments
from ki_vla_ros.runtime.topics import ACTION_CHUNK_TOPIC, INSTRUCTION_TOPIC, SUBTASK_TOPIC
from ki_vla_ros.runtime.config import RobotConfig, load_robot_config

DISCOVERY_PERIOD_S = 0.1  # how often the graph is checked for new publishers
QUEUE_DEPTH = 1000  # deep enough for 500 Hz joint states while the bag writer is busy
DRAIN_IDLE_S = 0.1  # the final drain ends after this long without a message received before the stop
DRAIN_MAX_S = 2.0  # ... or after this long, whatever the publishers keep sending


def recorded_topics(config: RobotConfig) -> dict[str, str]:
    """topic -> message type (rosbag2 name) for everything `record` subscribes to."""
    topics = {c.topic: IMAGE if c.message_type == "raw" else COMPRESSED_IMAGE for c in config.cameras}
    topics[config.joint_states_topic] = JOINT_STATE
    if config.odom_topic:
        topics[config.odom_topic] = ODOMETRY
    for group in config.action_groups:
        command_type = JOINT_TRAJECTORY if group.kind == "joint_trajectory" else TWIST
        for topic in (group.controller_topic, group.policy_topic, group.teleop_topic):
            topics[topic] = command_type
    topics[ACTION_CHUNK_TOPIC] = ACTION_CHUNK
    topics[INSTRUCTION_TOPIC] = STRING
    topics[SUBTASK_TOPIC] = SUBTASK
    return topics


def message_class(msgtype: str) -> Any:
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image (the rclpy message class)."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


class Recorder(Node):
    """Subscribes (raw) to `topics` as their publishers appear and writes to a BagWriter."""

    def __init__(self, writer: BagWriter, topics: dict[str, str], context: Context):
        super().__init__("ki_vla_recorder", context=context)
        self.writer = writer
        self.pending = dict(topics)  # not yet subscribed: waiting for a publisher
        self.subscriptions_by_topic: dict[str, Any] = {}
        self.last_message_monotonic = time.monotonic()
        self.stop_ns: int | None = None  # set when stopping; later arrivals are not written
        for topic, msgtype in list(self.pending.items()):
            try:
                message_class(msgtype)
            except (ImportError, AttributeError):
                self.get_logger().warning(f"not recording {topic}: message type {msgtype} is not "
                                          "installed in this Python environment")
                del self.pending[topic]
        self.create_timer(DISCOVERY_PERIOD_S, self._subscribe_new_publishers)
        self._subscribe_new_publishers()

    def _subscribe_new_publishers(self) -> None:
        for topic in list(self.pending):
            publishers = self.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            msgtype = self.pending.pop(topic)
            offered = {p.topic_type for p in publishers}
            if offered != {msgtype}:
                self.get_logger().error(f"not recording {topic}: publishers offer {sorted(offered)}; "
                                        f"the config expects {msgtype}")
                continue
            qos = _matching_qos([p.qos_profile for p in publishers])
            self.writer.add_topic(topic, msgtype)
            self.subscriptions_by_topic[topic] = self.create_subscription(
                message_class(msgtype), topic, self._writer_callback(topic), qos, raw=True)
            self.get_logger().info(f"recording {topic} ({msgtype}, "
                                   f"{qos.reliability.name.lower()}, {qos.durability.name.lower()})")

    def _writer_callback(self, topic: str):
        def on_message(data: bytes, info: Any) -> None:
            receive_ns = info.get("received_timestamp") if isinstance(info, dict) else None
            if not receive_ns:
                receive_ns = time.time_ns()
            if self.stop_ns is not None and receive_ns > self.stop_ns:
                return  # arrived after the stop: the bag ends at the stop instant
            if self.writer.counts.get(topic, 0) == 0:
                self.get_logger().info(f"first message on {topic}")
            self.writer.write_raw(topic, receive_ns, data)
            self.last_message_monotonic = time.monotonic()

        return on_message

    def drain(self, executor: SingleThreadedExecutor) -> None:
        """Write what the middleware received before now but we have not taken yet."""
        self.stop_ns = time.time_ns()
        started = self.last_message_monotonic = time.monotonic()
        while (time.monotonic() - self.last_message_monotonic < DRAIN_IDLE_S
               and time.monotonic() - started < DRAIN_MAX_S):
            executor.spin_once(timeout_sec=0.02)


def _matching_qos(offered: list[QoSProfile]) -> QoSProfile:
    reliable = all(q.reliability == ReliabilityPolicy.RELIABLE for q in offered)
    latched = all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=QUEUE_DEPTH,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def record(config: RobotConfig | str, out: str | Path, storage: str = "mcap",
           duration_s: float | None = None, domain_id: int | None = None) -> dict[str, int]:
    """Record until SIGINT/SIGTERM (or duration_s); returns messages written per topic."""
    config = config if isinstance(config, RobotConfig) else load_robot_config(config)
    stop = {"requested": False}

    def request_stop(signum, frame):
        if stop["requested"]:  # a second signal: give up on the drain
            raise KeyboardInterrupt
        stop["requested"] = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    context = Context()
    import rclpy

    rclpy.init(context=context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
    writer = BagWriter(out, storage)
    executor = SingleThreadedExecutor(context=context)
    try:
        recorder = Recorder(writer, recorded_topics(config), context)
        executor.add_node(recorder)
        print(f"recording up to {len(recorder.pending) + len(recorder.subscriptions_by_topic)} topics of "
              f"'{config.name}' into {out} ({storage}); Ctrl-C to stop", flush=True)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not stop["requested"] and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.1)
        recorder.drain(executor)
    finally:
        writer.close()
        executor.shutdown()
        context.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    counts = dict(writer.counts)
    total = sum(counts.values())
    print(f"wrote {total} messages on {len(counts)} topics to {out}", flush=True)
    for topic, n in sorted(counts.items()):
        print(f"  {n:8d}  {topic}", flush=True)
    return counts


def main_from_args(args: argparse.Namespace) -> int:
    record(args.config, args.out, storage=args.storage, duration_s=args.duration)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ki-vla record", description=__doc__.splitlines()[0])
    add_record_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
