"""Shared `main()` for node executables: init, build nodes, spin, shut down cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import sys

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor


def run_nodes(args, build) -> None:
    """build(argv_without_ros_args) -> list of nodes; spun on a multi-threaded executor."""
    argv = list(sys.argv if args is None else args)
    rclpy.init(args=argv)
    non_ros = rclpy.utilities.remove_ros_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    nodes = []
    try:
        nodes = build(non_ros[1:])
        executor = MultiThreadedExecutor(num_threads=4)
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
