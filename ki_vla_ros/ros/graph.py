"""Waiting on the ROS graph instead of sleeping.

DDS discovery between two processes takes 0.3 s to 2.5 s on loopback. Publishing before
the peer has matched loses the message, so code that must not lose the first message
waits here for the match, with a deadline and an error that says what never appeared.
"""
from __future__ import annotations

import time
from typing import Callable

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor, SingleThreadedExecutor
from rclpy.node import Node


class GraphTimeout(TimeoutError):
    """A publisher, subscription or message did not appear before the deadline."""


def spin_until(
    node: Node,
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    executor: Executor | None = None,
) -> None:
    """Spin `node` (or `executor`) until `condition()` is true; raise GraphTimeout naming `what`."""
    deadline = time.monotonic() + timeout_s
    own_executor = executor is None
    if own_executor:
        # Bound to the node's context: rclpy.spin_once() would use the global one.
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
    try:
        while not condition():
            if time.monotonic() > deadline:
                raise GraphTimeout(f"timed out after {timeout_s:.1f} s waiting for {what}")
            executor.spin_once(timeout_sec=0.02)
    finally:
        if own_executor:
            executor.remove_node(node)
            executor.shutdown()


def wait_for_subscribers(node: Node, publisher, count: int = 1, timeout_s: float = 10.0) -> None:
    """Block until `publisher` has matched at least `count` subscriptions."""
    spin_until(
        node,
        lambda: publisher.get_subscription_count() >= count,
        timeout_s,
        f"{count} subscriber(s) on {publisher.topic_name}",
    )


def wait_for_publishers(node: Node, subscription, count: int = 1, timeout_s: float = 10.0) -> None:
    """Block until `subscription` has matched at least `count` publishers."""
    spin_until(
        node,
        lambda: subscription.get_publisher_count() >= count,
        timeout_s,
        f"{count} publisher(s) on {subscription.topic_name}",
    )


def observer_node(name: str, domain_id: int) -> tuple[Context, Node, SingleThreadedExecutor]:
    """A node of this process on its own context on `domain_id`, with an executor to spin it
    (the demo and the benchmarks watch the graph they started with one)."""
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    return context, node, executor
