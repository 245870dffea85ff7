"""Fixtures for tests with real rclpy nodes: a context on the test's domain, spun in a thread."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

# Tests import the helper classes from ros_helpers.py next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))


class RosGraph:
    """Nodes on one rclpy context, spun by a multi-threaded executor on a background thread."""

    def __init__(self, context):
        from rclpy.executors import MultiThreadedExecutor

        self.context = context
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self.nodes = []
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def _spin(self):
        while not self._stop.is_set() and self.context.ok():
            self.executor.spin_once(timeout_sec=0.02)

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def node(self, name: str):
        import rclpy

        return self.add(rclpy.create_node(name, context=self.context))

    def wait_for(self, condition, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.02)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        for node in self.nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown()


@pytest.fixture
def ros_graph(rclpy_context):
    graph = RosGraph(rclpy_context)
    yield graph
    graph.close()
