"""`ki-vla bringup CONFIG [--sim]`: start the graph of a robot config as processes.

The venv has no `ros2 launch`; this starts the same nodes the launch files start
(graph_spec.graph_nodes), one process each, and stops them together.

Stopping is ordered so the robot is left holding:

- SIGINT, SIGTERM or SIGHUP to bringup stops the nodes in reverse start order: the policy
  first (it holds and exits), then the mux (it switches to hold, sends every moving group a
  hold at the measured position and waits for the controllers to acknowledge), then the
  sim. Each gets `STOP_TIMEOUT_S` before SIGKILL. The nodes run in their own process group,
  so a Ctrl-C in the terminal reaches bringup only and the order holds; on Linux each node
  also gets SIGTERM if bringup itself is killed, so none is ever left running alone.
- If any node dies (crash, SIGKILL, failed configure), bringup stops all the others the
  same way (so the mux holds the robot before anything else exits), names the node and how
  it ended, and exits with status 1. It does not restart the policy: a policy that died
  once is a fault someone has to look at, and a restart would move the robot again
  unattended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ki_vla_ros.ros.dds import graph_environment
from ki_vla_ros.ros.graph_spec import NodeSpec, command_line, graph_nodes
from ki_vla_ros.ros.node_main import PARENT_PID_VARIABLE

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_TIMEOUT_S = 10.0


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return "exited normally" if code == 0 else f"exited with status {code}"


class Graph:
    """A running set of node processes, stopped in reverse start order."""

    def __init__(self, specs: list[NodeSpec], env: dict | None = None, log_dir: Path | None = None):
        """log_dir: write each node's output to <log_dir>/<name>.log instead of this terminal."""
        self.specs = list(specs)
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = graph_environment(env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env[PARENT_PID_VARIABLE] = str(os.getpid())  # node_main: stop when this process dies
        self.log_dir = None if log_dir is None else Path(log_dir)
        self._logs = []
        for spec in self.specs:
            self.start(spec.name)

    def start(self, name: str) -> subprocess.Popen:
        """Start (or restart) node `name`; a restart appends to its log."""
        spec = next(s for s in self.specs if s.name == name)
        out = None
        if self.log_dir is not None:
            out = open(self.log_dir / f"{spec.name}.log", "a")
            self._logs.append(out)
        self.processes[name] = subprocess.Popen(
            command_line(spec, sys.executable), env=self.env, stdout=out,
            stderr=subprocess.STDOUT if out else None, process_group=0)
        return self.processes[name]

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int]:
        """SIGINT each node in reverse start order and wait for it (SIGKILL after timeout_s),
        so the policy stops before the mux and the mux before the robot."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()
        return {name: p.returncode for name, p in self.processes.items()}


def run_bringup(config: str, sim: bool, checkpoint: str = "", use_sim_time: bool = False) -> int:
    specs = graph_nodes(config, sim=sim, checkpoint=checkpoint, use_sim_time=use_sim_time)
    requested = threading.Event()
    received: list[str] = []

    def on_stop_signal(signum, frame):
        received.append(signal.Signals(signum).name)
        requested.set()

    previous = {signum: signal.signal(signum, on_stop_signal) for signum in STOP_SIGNALS}
    graph = Graph(specs)
    print(f"[bringup] {config}: started " + ", ".join(f"{n} (pid {p.pid})" for n, p in graph.processes.items())
          + f" (ROS_DOMAIN_ID={graph.env.get('ROS_DOMAIN_ID', '0')})", flush=True)
    try:
        while not requested.wait(0.2):
            died = graph.exited()
            if died:
                for name, code in died.items():
                    print(f"[bringup] {name} {describe_exit(code)}; stopping the rest "
                          "(the mux holds the robot first)", file=sys.stderr, flush=True)
                break
        else:
            died = {}
            print(f"[bringup] {received[0]}: stopping the policy, then the mux (holds the robot), "
                  "then the rest", flush=True)
        codes = graph.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for name, code in codes.items():
        print(f"[bringup]   {name}: {describe_exit(code)}", flush=True)
    if died:
        print(f"[bringup] FAILED: {', '.join(f'{n} {describe_exit(c)}' for n, c in died.items())}",
              file=sys.stderr, flush=True)
        return 1
    failed = {n: c for n, c in codes.items() if c != 0}
    if failed:
        print(f"[bringup] FAILED: did not stop cleanly: "
              f"{', '.join(f'{n} {describe_exit(c)}' for n, c in failed.items())}", file=sys.stderr, flush=True)
        return 1
    return 0
