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
  publishers' endpoint info: reliable only if every publisher is reliable (a reliable
  subscription never matches a best-effort camera driver), transient-local if all are
  (latched topics). Recorded demonstrations are training data: against a reliable
  publisher (sim_robot, most drivers) nothing is dropped in transport.
- queues are sized for the rates (queue_depth): two seconds of the fastest expected rate,
  so a bag writer that stalls for a moment loses nothing.
- at the end, per topic: the count, the rate, the longest gap and, for sensor topics, the
  gaps in their header stamps longer than 1.5x the median period with an estimate of the
  messages missing; a WARNING names every sensor topic with missing messages.
- SIGINT / SIGTERM stop spinning, take whatever the middleware already holds for us
  (a final drain), and close the bag: the MCAP summary / sqlite index is written and no
  message already received is lost. A second signal while draining exits at once.
"""

from __future__ import annotations

import argparse
import importlib
import math
import signal
import struct
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from ki_vla_ros.eval.bag_io import (
    ACTION_CHUNK, COMPRESSED_IMAGE, IMAGE, JOINT_STATE, JOINT_TRAJECTORY, ODOMETRY, STRING, SUBTASK,
    BagWriter, twist_command_type)
from ki_vla_ros.eval.commands import add_record_arguments
from ki_vla_ros.runtime.topics import ACTION_CHUNK_TOPIC, INSTRUCTION_TOPIC, SUBTASK_TOPIC
from ki_vla_ros.runtime.config import RobotConfig, load_robot_config

DISCOVERY_PERIOD_S = 0.1  # how often the graph is checked for new publishers
# Queue depth = BUFFER_S of the fastest rate expected on a topic (queue_depth), so a writer
# stall that short loses nothing; cameras get less, as each frame can be a megabyte.
BUFFER_S = 2.0
CAMERA_MAX_HZ = 60.0
JOINT_STATE_MAX_HZ = 500.0  # drivers often publish joint states faster than the control rate
MIN_QUEUE_DEPTH = 100
GAP_FACTOR = 1.5  # a stamp interval this many median periods long is a gap
DRAIN_IDLE_S = 0.1  # the final drain ends after this long without a message received before the stop
DRAIN_MAX_S = 2.0  # ... or after this long, whatever the publishers keep sending


def sensor_topics(config: RobotConfig) -> set[str]:
    """The recorded topics with a steady rate and a header stamp: cameras, joint states, odometry."""
    return {c.topic for c in config.cameras} | {config.joint_states_topic} | (
        {config.odom_topic} if config.odom_topic else set())


def recorded_topics(config: RobotConfig) -> dict[str, str]:
    """topic -> message type (rosbag2 name) for everything `record` subscribes to."""
    topics = {c.topic: IMAGE if c.message_type == "raw" else COMPRESSED_IMAGE for c in config.cameras}
    topics[config.joint_states_topic] = JOINT_STATE
    if config.odom_topic:
        topics[config.odom_topic] = ODOMETRY
    for group in config.action_groups:
        command_type = JOINT_TRAJECTORY if group.kind == "joint_trajectory" else twist_command_type(group)
        for topic in (group.controller_topic, group.policy_topic, group.teleop_topic):
            topics[topic] = command_type
    topics[ACTION_CHUNK_TOPIC] = ACTION_CHUNK
    topics[INSTRUCTION_TOPIC] = STRING
    topics[SUBTASK_TOPIC] = SUBTASK
    return topics


def queue_depth(msgtype: str, config: RobotConfig) -> int:
    """Subscription depth for a topic of `msgtype`: BUFFER_S at the fastest rate it is expected at."""
    rate_hz = {IMAGE: CAMERA_MAX_HZ, COMPRESSED_IMAGE: CAMERA_MAX_HZ, JOINT_STATE: JOINT_STATE_MAX_HZ,
               ODOMETRY: max(config.control_rate_hz, 100.0)}.get(msgtype, config.control_rate_hz)
    return max(MIN_QUEUE_DEPTH, math.ceil(rate_hz * BUFFER_S))


def header_stamp_ns(data: bytes) -> int | None:
    """The header stamp of a serialized message whose first field is a std_msgs/Header (CDR:
    4 bytes of encapsulation, then int32 sec and uint32 nanosec), or None if too short."""
    if len(data) < 12:
        return None
    order = "<" if data[1] & 1 else ">"  # encapsulation 0x0001 / 0x0003: little-endian
    sec, nanosec = struct.unpack_from(order + "iI", data, 4)
    return sec * 1_000_000_000 + nanosec


@dataclass
class TopicStats:
    """What was written for one topic: count and receive times; for a sensor topic (steady
    rate, a header) also the intervals between its header stamps, to find lost messages."""

    sensor: bool
    count: int = 0
    first_receive_ns: int = 0
    last_receive_ns: int = 0
    max_receive_gap_ns: int = 0
    last_stamp_ns: int | None = None
    stamp_intervals_ns: array = field(default_factory=lambda: array("q"))

    def add(self, receive_ns: int, data: bytes) -> None:
        if self.count == 0:
            self.first_receive_ns = receive_ns
        else:
            self.max_receive_gap_ns = max(self.max_receive_gap_ns, receive_ns - self.last_receive_ns)
        self.count += 1
        self.last_receive_ns = receive_ns
        if self.sensor:
            stamp_ns = header_stamp_ns(data)
            if stamp_ns is not None:
                if self.last_stamp_ns is not None and stamp_ns > self.last_stamp_ns:
                    self.stamp_intervals_ns.append(stamp_ns - self.last_stamp_ns)
                self.last_stamp_ns = stamp_ns

    def summary(self) -> dict[str, Any]:
        """count, rate_hz (receive times), max_gap_ms; for sensors also period_ms (median stamp
        interval), gaps (intervals over GAP_FACTOR periods) and missing (messages they lack)."""
        span_s = (self.last_receive_ns - self.first_receive_ns) * 1e-9
        out: dict[str, Any] = {"count": self.count,
                               "rate_hz": (self.count - 1) / span_s if self.count > 1 and span_s > 0 else None,
                               "max_gap_ms": self.max_receive_gap_ns * 1e-6 if self.count > 1 else None,
                               "period_ms": None, "gaps": None, "missing": None}
        if self.sensor and len(self.stamp_intervals_ns) >= 2:
            intervals = np.frombuffer(self.stamp_intervals_ns, dtype=np.int64).astype(np.float64)
            period = float(np.median(intervals))
            long = intervals[intervals > GAP_FACTOR * period]
            out.update(period_ms=period * 1e-6, gaps=int(long.size),
                       missing=int(np.sum(np.maximum(np.round(long / period) - 1, 1))))
        return out


def format_stats(stats: dict[str, TopicStats]) -> list[str]:
    """The end-of-recording table (one line per topic) and a WARNING line per sensor topic with gaps."""
    def show(value, spec):
        return format("-", f">{spec.split('.')[0].rstrip('d')}") if value is None else format(value, spec)

    lines = [f"{'count':>8} {'rate_hz':>8} {'max_gap_ms':>10} {'gaps':>5} {'missing':>7}  topic"]
    warnings = []
    for topic, topic_stats in sorted(stats.items()):
        s = topic_stats.summary()
        lines.append(f"{s['count']:8d} {show(s['rate_hz'], '8.2f')} {show(s['max_gap_ms'], '10.1f')} "
                     f"{show(s['gaps'], '5d')} {show(s['missing'], '7d')}  {topic}")
        if s["missing"]:
            warnings.append(f"WARNING: {topic}: about {s['missing']} messages missing ({s['gaps']} gaps in the "
                            f"header stamps longer than {GAP_FACTOR}x the median period {s['period_ms']:.1f} ms): "
                            "lost in transport or never sent; this recording is incomplete as training data")
    return lines + warnings


def message_class(msgtype: str) -> Any:
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image (the rclpy message class)."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


class Recorder(Node):
    """Subscribes (raw) to `topics` as their publishers appear and writes to a BagWriter."""

    def __init__(self, writer: BagWriter, topics: dict[str, str], context: Context,
                 depths: dict[str, int] | None = None, sensor_topics=()):
        """depths: queue depth per topic (default MIN_QUEUE_DEPTH); sensor_topics: those with a
        steady rate and a header, whose stamps are checked for gaps."""
        super().__init__("ki_vla_recorder", context=context)
        self.writer = writer
        self.pending = dict(topics)  # not yet subscribed: waiting for a publisher
        self.depths = dict(depths or {})
        self.stats = {topic: TopicStats(sensor=topic in sensor_topics) for topic in topics}
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
            qos = _matching_qos([p.qos_profile for p in publishers], self.depths.get(topic, MIN_QUEUE_DEPTH))
            self.writer.add_topic(topic, msgtype)
            self.subscriptions_by_topic[topic] = self.create_subscription(
                message_class(msgtype), topic, self._writer_callback(topic), qos, raw=True)
            self.get_logger().info(f"recording {topic} ({msgtype}, "
                                   f"{qos.reliability.name.lower()}, {qos.durability.name.lower()}, depth {qos.depth})")

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
            self.stats[topic].add(receive_ns, data)
            self.last_message_monotonic = time.monotonic()

        return on_message

    def drain(self, executor: SingleThreadedExecutor) -> None:
        """Write what the middleware received before now but we have not taken yet."""
        self.stop_ns = time.time_ns()
        started = self.last_message_monotonic = time.monotonic()
        while (time.monotonic() - self.last_message_monotonic < DRAIN_IDLE_S
               and time.monotonic() - started < DRAIN_MAX_S):
            executor.spin_once(timeout_sec=0.02)


def _matching_qos(offered: list[QoSProfile], depth: int) -> QoSProfile:
    reliable = all(q.reliability == ReliabilityPolicy.RELIABLE for q in offered)
    latched = all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
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
        topics = recorded_topics(config)
        recorder = Recorder(writer, topics, context, depths={t: queue_depth(m, config) for t, m in topics.items()},
                            sensor_topics=sensor_topics(config))
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
    for line in format_stats({t: s for t, s in recorder.stats.items() if t in counts}):
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout, flush=True)
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
