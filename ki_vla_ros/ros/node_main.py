"""Shared `main()` for node executables: init, build nodes, spin, shut down cleanly on SIGINT/SIGTERM.

Why the signal handling is done this way: Python raises KeyboardInterrupt in the main
thread between any two bytecodes. If it lands while the main thread holds a lock inside
`ThreadPoolExecutor.submit` (MultiThreadedExecutor hands every callback to one), that lock
is never released, the worker threads block on it, and the process hangs at exit until
SIGKILL (seen as `command_mux: -9` in CI). So once the executor exists, no exception is
raised asynchronously: the Python-level handler only records the request, and rclpy's own
handler (it chains to it) shuts the context down, which makes `executor.spin()` return.
While the nodes are still being built (a model load and warm-up can take seconds) the
process has published nothing and has nothing to clean up, and raising there is not safe
either (a KeyboardInterrupt inside a pybind11 call aborts the process), so a signal then
ends the process at once, with the signal as its exit status (-2 for SIGINT).

A node that hangs anyway can be inspected: SIGUSR1 prints every thread's stack to stderr.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_nodes(args, build) -> None:
    """build(argv_without_ros_args) -> list of nodes; spun on a multi-threaded executor."""
    argv = list(sys.argv if args is None else args)
    stop = threading.Event()
    spinning = threading.Event()

    def on_stop_signal(signum, frame):
        stop.set()
        if not spinning.is_set():
            sys.stderr.write(f"stopped by {signal.Signals(signum).name} while starting\n")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    # Installed before rclpy.init so that rclpy's handler chains to it.
    for signum in _STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    rclpy.init(args=argv)
    non_ros = rclpy.utilities.remove_ros_args(argv)
    nodes = []
    executor = None
    try:
        nodes = build(non_ros[1:])
        executor = MultiThreadedExecutor(num_threads=4)
        for node in nodes:
            executor.add_node(node)
        spinning.set()
        if not stop.is_set():
            executor.spin()
    except ExternalShutdownException:
        pass
    except _rclpy.RCLError:
        # rclpy checks context.ok() and then builds a wait set on the context; a signal
        # that shuts the context down in between fails the second step. That is a stop.
        if not stop.is_set():
            raise
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
