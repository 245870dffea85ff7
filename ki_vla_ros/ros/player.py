"""`ki-vla play`: a bag back onto live topics with its original timing.

    ki-vla play episode_07 [--rate 2.0] [--clock] [--loop] [--topics /joint_states ...]

Each message is published (raw: the recorded CDR bytes, unchanged) when its receive time,
relative to the bag start and divided by --rate, has elapsed on the wall clock; a late
message is sent at once, so the order always holds and delays do not accumulate.
Header stamps are not rewritten: run the live graph with use_sim_time and --clock, which
publishes /clock (rosgraph_msgs/Clock) with the bag time, as `ros2 bag play --clock` does.

Publishers are reliable (they match reliable and best-effort subscribers) and volatile.
`--wait-for-subscribers` holds the start until every played topic has a subscriber, so
the first messages are not lost to DDS discovery (0.3 s to 2.5 s on loopback), and then
MATCH_SETTLE_S more: DDS matches the two ends separately, and a message sent after the
publisher has matched the subscriber but before the subscriber has matched the publisher
can be dropped. At the end the player waits (up to ACK_TIMEOUT_S) until every subscriber
has acknowledged the last messages: shutting down right after the last publish lost it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from ki_vla_ros.eval.bag_io import CLOCK, Bag, BagError
from ki_vla_ros.eval.commands import add_play_arguments
from ki_vla_ros.ros.graph import spin_until
from ki_vla_ros.ros.recorder import message_class

CLOCK_TOPIC = "/clock"
MATCH_SETTLE_S = 0.5
ACK_TIMEOUT_S = 5.0  # at the end, for the subscribers to acknowledge the last messages (> Fast DDS heartbeat, 3 s)
PLAYER_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                        reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


class Player(Node):
    def __init__(self, bag: Bag, topics: Sequence[str], context: Context, publish_clock: bool):
        super().__init__("ki_vla_player", context=context)
        self.bag = bag
        self.publishers_by_topic = {}
        for topic in topics:
            msgtype = bag.topics[topic]
            try:
                cls = message_class(msgtype)
            except (ImportError, AttributeError, ValueError) as exc:
                raise BagError(bag.path, f"message type {msgtype} is not installed in this Python "
                                         f"environment ({exc}); cannot publish it", topic) from exc
            self.publishers_by_topic[topic] = self.create_publisher(cls, topic, PLAYER_QOS)
        self.clock_publisher = (self.create_publisher(message_class(CLOCK), CLOCK_TOPIC, PLAYER_QOS)
                                if publish_clock else None)
        self._clock_msg = message_class(CLOCK)() if publish_clock else None

    def flush(self, timeout_s: float = ACK_TIMEOUT_S) -> None:
        """Wait until the subscribers have acknowledged what was published. Fast DDS sends
        asynchronously: a player that shut down right after its last publish lost the
        bag's last message in 3 of 12 test replays."""
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout_s
        for topic, publisher in self.publishers_by_topic.items():
            remaining = max(0.0, deadline - time.monotonic())
            if not publisher.wait_for_all_acked(Duration(nanoseconds=int(remaining * 1e9))):
                self.get_logger().warning(f"{topic}: not every subscriber acknowledged the last messages "
                                          f"within {timeout_s:.1f} s; they may have missed them")

    def publish_clock(self, bag_time_ns: int) -> None:
        if self.clock_publisher is not None:
            self._clock_msg.clock.sec, self._clock_msg.clock.nanosec = divmod(int(bag_time_ns), 1_000_000_000)
            self.clock_publisher.publish(self._clock_msg)


def play(bag_path: str | Path, rate: float = 1.0, publish_clock: bool = False, loop: bool = False,
         topics: Sequence[str] | None = None, wait_for_subscribers_s: float | None = None,
         clock_hz: float = 100.0, domain_id: int | None = None) -> int:
    """Publish the bag; returns the number of messages published."""
    if rate <= 0:
        raise ValueError(f"rate is {rate}; expected > 0")
    stop = {"requested": False}

    def request_stop(signum, frame):
        stop["requested"] = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    import rclpy

    context = Context()
    rclpy.init(context=context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
    published = 0
    try:
        with Bag(bag_path) as bag:
            chosen = list(topics) if topics else sorted(bag.topics)
            missing = [t for t in chosen if t not in bag.topics]
            if missing:
                raise BagError(bag.path, f"topics {missing} are not in the bag; it has {sorted(bag.topics)}")
            player = Player(bag, chosen, context, publish_clock)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(player)
            if wait_for_subscribers_s is not None:
                spin_until(player, lambda: all(p.get_subscription_count() > 0
                                               for p in player.publishers_by_topic.values()),
                           wait_for_subscribers_s, f"a subscriber on each of {chosen}", executor=executor)
                settle_end = time.monotonic() + MATCH_SETTLE_S
                spin_until(player, lambda: time.monotonic() >= settle_end, MATCH_SETTLE_S + 1.0,
                           "the subscribers to match the player", executor=executor)
            print(f"playing {bag.path} ({bag.message_count(chosen)} messages on {len(chosen)} topics, "
                  f"rate {rate})", flush=True)
            while not stop["requested"]:
                published += _play_once(bag, player, chosen, rate, clock_hz, stop)
                if not loop:
                    break
            player.flush()
            executor.shutdown()
    finally:
        context.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"published {published} messages", flush=True)
    return published


def _play_once(bag: Bag, player: Player, topics: Sequence[str], rate: float, clock_hz: float,
               stop: dict) -> int:
    start_wall = time.monotonic()
    start_bag_ns = None
    clock_period_s = 1.0 / clock_hz
    count = 0
    for topic, _, time_ns, data in bag.raw_messages(topics):
        if stop["requested"]:
            break
        if start_bag_ns is None:
            start_bag_ns = time_ns
        due_wall = start_wall + (time_ns - start_bag_ns) * 1e-9 / rate
        # Wait for the message's time, publishing /clock meanwhile so sim-time nodes advance.
        while (remaining := due_wall - time.monotonic()) > 0 and not stop["requested"]:
            player.publish_clock(start_bag_ns + int((time.monotonic() - start_wall) * rate * 1e9))
            time.sleep(min(remaining, clock_period_s))
        player.publish_clock(time_ns)
        player.publishers_by_topic[topic].publish(data)
        count += 1
    return count


def main_from_args(args: argparse.Namespace) -> int:
    play(args.bag, rate=args.rate, publish_clock=args.clock, loop=args.loop, topics=args.topics,
         wait_for_subscribers_s=args.wait_for_subscribers, clock_hz=args.clock_hz)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ki-vla play", description=__doc__.splitlines()[0])
    add_play_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
