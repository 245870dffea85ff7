"""`ki-vla bringup CONFIG [--sim]`: start the graph of a robot config as processes.

The venv has no `ros2 launch`; this starts the same nodes the launch files start
(graph_spec.graph_nodes), one process each, and stops them together on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ki_vla_ros.ros.graph_spec import NodeSpec, command_line, graph_nodes


class Graph:
    """A running set of node processes."""

    def __init__(self, specs: list[NodeSpec], env: dict | None = None, log_dir: Path | None = None):
        """log_dir: write each node's output to <log_dir>/<name>.log instead of this terminal."""
        self.specs = specs
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs = []
        env = dict(os.environ if env is None else env)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        env["PYTHONUNBUFFERED"] = "1"
        for spec in specs:
            out = None
            if log_dir is not None:
                out = open(Path(log_dir) / f"{spec.name}.log", "w")
                self._logs.append(out)
            self.processes[spec.name] = subprocess.Popen(command_line(spec, sys.executable), env=env,
                                                         stdout=out, stderr=subprocess.STDOUT if out else None)

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def stop(self, timeout_s: float = 10.0) -> dict[str, int]:
        for p in self.processes.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for p in self.processes.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self._logs:
            log.close()
        return {name: p.returncode for name, p in self.processes.items()}


def run_bringup(config: str, sim: bool, checkpoint: str = "", use_sim_time: bool = False) -> int:
    specs = graph_nodes(config, sim=sim, checkpoint=checkpoint, use_sim_time=use_sim_time)
    print(f"[bringup] {config}: starting " + ", ".join(s.name for s in specs)
          + f" (ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')})")
    graph = Graph(specs)
    try:
        while not graph.exited():
            time.sleep(0.2)
        print(f"[bringup] a node exited: {graph.exited()}; stopping the rest")
    except KeyboardInterrupt:
        pass
    codes = graph.stop()
    return 0 if all(c in (0, -signal.SIGINT) for c in codes.values()) else 1
