"""Shared `main()` for node executables: init, build nodes, spin, and stop safely on a signal.

A stop request (SIGINT, SIGTERM or SIGHUP) never raises inside the executor. Python would
raise KeyboardInterrupt in the main thread between any two bytecodes; if it lands while the
main thread holds a lock inside `ThreadPoolExecutor.submit` (MultiThreadedExecutor hands
every callback to one), that lock is never released and the process hangs at exit (seen as
`command_mux: -9` in CI). rclpy's own handler is not used either: it shuts the context down
at once, after which no node can publish, so the last thing a node wants to say (the mux's
hold at the measured position) could never be sent, and worker threads that publish fail
with "publisher's context is invalid".

Instead the handler only records the request, the main thread spins in short slices and
notices it within `_SPIN_SLICE_S`, and then, while the context is still valid:

1. every node that has `prepare_to_exit()` is asked to leave the robot holding (the policy
   node stops its inference thread and holds; the mux switches to hold and sends a hold
   at the measured position to every controller it drove, and waits for delivery);
2. the executor finishes its callbacks, the nodes are destroyed, the context shut down.

A requested stop exits with status 0. While the nodes are still being built (a model load
and warm-up can take seconds) the process has published nothing and has nothing to clean
up, and raising there is not safe (a KeyboardInterrupt inside a pybind11 call aborts the
process), so a signal then ends the process at once, with the signal as its exit status.

A node that hangs anyway can be inspected: SIGUSR1 prints every thread's stack to stderr.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.signals import SignalHandlerOptions

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SPIN_SLICE_S = 0.05
# Set by bringup to its pid: the node then gets SIGTERM when bringup dies (even by SIGKILL).
PARENT_PID_VARIABLE = "KI_VLA_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """When started by bringup: ask Linux for SIGTERM on the parent's death (prctl), and stop
    now if it already died before this process got here. Elsewhere (no prctl) a no-op."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


def run_nodes(args, build) -> None:
    """build(argv_without_ros_args) -> list of nodes; spun on a multi-threaded executor."""
    argv = list(sys.argv if args is None else args)
    stop = threading.Event()
    spinning = threading.Event()

    def on_stop_signal(signum, frame):
        if not spinning.is_set():
            sys.stderr.write(f"stopped by {signal.Signals(signum).name} while starting\n")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stop.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)
    stop_with_parent()
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    non_ros = rclpy.utilities.remove_ros_args(argv)
    nodes = []
    executor = None
    try:
        nodes = build(non_ros[1:])
        executor = MultiThreadedExecutor(num_threads=4)
        for node in nodes:
            executor.add_node(node)
        spinning.set()
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=_SPIN_SLICE_S)
    except ExternalShutdownException:
        pass
    finally:
        if rclpy.ok():
            for node in nodes:
                prepare = getattr(node, "prepare_to_exit", None)
                if prepare is not None:
                    prepare()
        if executor is not None:
            _shutdown_executor(executor)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()


def _shutdown_executor(executor: MultiThreadedExecutor) -> None:
    """Let queued callbacks finish, then shut the executor down.

    rclpy 9's MultiThreadedExecutor.shutdown destroys its guard condition before its thread
    pool has run the tasks already queued, and each such task then fails on the destroyed
    guard condition ("The following exception was never retrieved: cannot use Destroyable
    because destruction was requested" at exit). Draining the pool first avoids that.
    """
    pool = getattr(executor, "_executor", None)  # the ThreadPoolExecutor; private in rclpy
    if pool is not None:
        pool.shutdown(wait=True)
    executor.shutdown(timeout_sec=2.0)
