"""Soak: the mobile graph with the sim at full sensor rates, a fault every `--period` seconds.

    python benchmarks/soak.py --minutes 10 [--checkpoint DIR] [--json soak.json]

Starts sim_robot, command_mux and policy_node (+ planner) as `ki-vla bringup mobile --sim`
does, gives the task and the instruction, and injects in turn (each for `--fault-s`):

    nan_state, stall_camera, stale_stamps, bad_image   (sim_robot/inject_fault: the sensors fail)
    huge_instruction   a 100 kB instruction, then the normal one again
    mode_switch_burst  10 mux switches teleop <-> policy in 1 s, ending in policy
    kill_policy        SIGKILL of policy_node, restarted after fault_s

Everything is measured on what arrives over DDS at the controllers:

- hold_s: fault start -> the first hold on an arm controller (one point, zero velocity) or,
  for the base, a zero Twist; recover_s: fault end -> the first policy trajectory again
  (several points);
- bad_chunks: chunks computed from an observation that holds a message of the faulty input
  sent during the fault (stamped at least sync.slop_s after the sim applied it, so every
  input of the set is from the fault window), or conditioned on the huge instruction:
  must be 0;
- for the run: RSS growth of each node process, planner subtasks, mux holds, chunks.

The same numbers for each fault kind are summarised as p50 / p99 (with --minutes 10 and a
30 s period each fault occurs about 3 times). This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAULTS = ("nan_state", "stall_camera", "stale_stamps", "bad_image", "huge_instruction", "mode_switch_burst",
          "kill_policy")
SENSOR_FAULTS = {"nan_state", "stall_camera", "stale_stamps", "bad_image"}
TASK = "tidy up the table: start with the red block"
INSTRUCTION = "move to the red block"
HUGE = "x " * 50_000


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def _pct(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


class Observer:
    """Records controller commands, chunks, subtasks and mux diagnostics as they arrive."""

    def __init__(self, node, config):
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from ki_vla_ros.msg import ActionChunk, Subtask
        from ki_vla_ros.ros.conversions import twist_type
        from ki_vla_ros.ros.dds import LATCHED_QOS
        from ki_vla_ros.runtime.topics import ACTION_CHUNK_TOPIC, INSTRUCTION_TOPIC, SUBTASK_TOPIC, TASK_TOPIC

        self.node = node
        self.commands: list[tuple[float, str, int, bool]] = []  # (time, group, points, is_hold)
        self.chunks: list[tuple[float, float, str]] = []  # (receive time, observation stamp, instruction)
        self.subtasks = 0
        self.mux = {}
        self.fault_since_s: dict[str, float] = {}  # fault -> when the sim last applied it
        for group in config.action_groups:
            if group.kind == "joint_trajectory":
                node.create_subscription(JointTrajectory, group.controller_topic,
                                         lambda m, g=group.name: self._on_trajectory(g, m), 10)
            else:
                node.create_subscription(twist_type(group), group.controller_topic,
                                         lambda m, g=group.name: self._on_twist(g, m), 10)
        node.create_subscription(ActionChunk, ACTION_CHUNK_TOPIC, self._on_chunk, 10)
        node.create_subscription(Subtask, SUBTASK_TOPIC, self._on_subtask, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        node.create_subscription(String, "/sim_robot/status", self._on_sim_status, 10)
        self.instruction = node.create_publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS)
        self.task = node.create_publisher(String, TASK_TOPIC, LATCHED_QOS)
        self.fault = node.create_publisher(String, "/sim_robot/inject_fault", 10)
        self.switch = {m: node.create_client(Trigger, f"/command_mux/{m}") for m in ("teleop", "policy")}

    def _on_trajectory(self, group, msg):
        hold = len(msg.points) == 1 and all(v == 0.0 for v in msg.points[0].velocities)
        self.commands.append((time.monotonic(), group, len(msg.points), hold))

    def _on_twist(self, group, msg):
        from ki_vla_ros.ros.conversions import twist_values

        zero = twist_values(msg) == (0.0, 0.0, 0.0)
        self.commands.append((time.monotonic(), group, 1, zero))

    def _on_chunk(self, msg):
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.chunks.append((time.monotonic(), stamp, msg.instruction))

    def _on_subtask(self, msg):
        self.subtasks += 1

    def _on_sim_status(self, msg):
        status = json.loads(msg.data)
        if status.get("fault", "none") != "none":
            self.fault_since_s[status["fault"]] = status["fault_since_s"]

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.endswith(": mux"):
                self.mux = {kv.key: kv.value for kv in status.values}


def run(minutes: float, period_s: float, fault_s: float, checkpoint: str, domain_id: int) -> dict:
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from ki_vla_ros.ros.bringup import Graph
    from ki_vla_ros.ros.dds import local_graph_environment
    from ki_vla_ros.ros.graph import observer_node
    from ki_vla_ros.ros.graph_spec import graph_nodes
    from ki_vla_ros.runtime.config import load_robot_config

    config = load_robot_config("mobile")
    log_dir = Path(tempfile.mkdtemp(prefix="ki_vla_soak_"))
    graph = Graph(graph_nodes("mobile", sim=True, checkpoint=checkpoint), env=local_graph_environment(domain_id),
                  log_dir=log_dir)
    print(f"[soak] logs in {log_dir}; ROS_DOMAIN_ID={domain_id}", flush=True)
    context, node, executor = observer_node("soak_observer", domain_id)
    obs = Observer(node, config)

    def spin_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.02)

    def spin_until(condition, timeout_s):
        end = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.02)
        return condition()

    def switch(mode):
        future = obs.switch[mode].call_async(Trigger.Request())
        spin_until(future.done, 5.0)

    events = []
    applied = {}  # (fault, t0) -> sim time the fault took effect
    try:
        spin_until(lambda: obs.instruction.get_subscription_count() >= 2 and obs.task.get_subscription_count() >= 1,
                   120.0)
        obs.instruction.publish(String(data=INSTRUCTION))
        obs.task.publish(String(data=TASK))
        if not spin_until(lambda: obs.chunks, 180.0):
            raise RuntimeError(f"no chunk in 180 s; logs in {log_dir}")
        spin_for(5.0)
        rss_start = {n: _rss_mb(p.pid) for n, p in graph.processes.items()}
        start = time.monotonic()
        k = 0
        while time.monotonic() - start < minutes * 60:
            kind = FAULTS[k % len(FAULTS)]
            k += 1
            t0 = time.monotonic()
            if kind in SENSOR_FAULTS:
                obs.fault.publish(String(data=kind))
            elif kind == "huge_instruction":
                obs.instruction.publish(String(data=HUGE))
            elif kind == "mode_switch_burst":
                for i in range(10):
                    switch("teleop" if i % 2 == 0 else "policy")
                    spin_for(0.1)
            elif kind == "kill_policy":
                graph.processes["policy_node"].send_signal(signal.SIGKILL)
            stamp0 = node.get_clock().now().nanoseconds * 1e-9
            spin_for(fault_s)
            if kind in SENSOR_FAULTS:
                since = obs.fault_since_s.get(kind, stamp0)
                applied[(kind, t0)] = since if since >= stamp0 else stamp0  # not this occurrence
            t1 = time.monotonic()
            stamp1 = node.get_clock().now().nanoseconds * 1e-9
            if kind in SENSOR_FAULTS:
                obs.fault.publish(String(data="none"))
            elif kind == "huge_instruction":
                obs.instruction.publish(String(data=INSTRUCTION))
            elif kind == "kill_policy":
                graph.processes["policy_node"].wait()
                graph.start("policy_node")
                spin_until(lambda: obs.instruction.get_subscription_count() >= 2, 120.0)
                obs.instruction.publish(String(data=INSTRUCTION))
                obs.task.publish(String(data=TASK))
            spin_for(max(0.0, period_s - (time.monotonic() - t0)))
            events.append((kind, t0, t1, stamp0, stamp1))
            print(f"[soak] {time.monotonic() - start:6.1f} s: {kind}", flush=True)
        spin_for(2.0)
        rss_end = {n: _rss_mb(p.pid) for n, p in graph.processes.items()}
        mux = dict(obs.mux)
    finally:
        graph.stop()
        node.destroy_node()
        context.try_shutdown()

    per_fault = {}
    for kind, t0, t1, stamp0, stamp1 in events:
        arm = [c for c in obs.commands if c[0] >= t0 and c[1] != "base"]
        hold = next((c[0] - t0 for c in arm if c[3]), None)
        recover = next((c[0] - t1 for c in arm if c[0] >= t1 and c[2] > 1), None)
        if kind in SENSOR_FAULTS:
            # from the first sensor message the fault affected (the sim applies it on arrival)
            # A set's stamps lie within sync.slop_s: a chunk stamped since + slop or later holds
            # a message of every input sent after the fault began, the faulty input's included.
            since = applied[(kind, t0)] + config.sync.slop_s
            bad = sum(1 for _, stamp, _ in obs.chunks if since <= stamp <= stamp1)
        elif kind == "huge_instruction":
            bad = sum(1 for _, _, text in obs.chunks if text == HUGE.strip())
        else:
            bad = 0
        entry = per_fault.setdefault(kind, {"hold_s": [], "recover_s": [], "bad_chunks": 0, "count": 0,
                                            "never_held": 0, "never_recovered": 0})
        entry["count"] += 1
        entry["bad_chunks"] += bad
        if hold is None:
            entry["never_held"] += 1
        else:
            entry["hold_s"].append(hold)
        if recover is None:
            entry["never_recovered"] += 1
        else:
            entry["recover_s"].append(recover)
    return {
        "minutes": minutes, "period_s": period_s, "fault_s": fault_s, "checkpoint": checkpoint or "config default",
        "faults": {k: {"count": v["count"], "hold_s_p50": _pct(v["hold_s"], 50), "hold_s_p99": _pct(v["hold_s"], 99),
                       "recover_s_p50": _pct(v["recover_s"], 50), "recover_s_p99": _pct(v["recover_s"], 99),
                       "never_held": v["never_held"], "never_recovered": v["never_recovered"],
                       "bad_chunks": v["bad_chunks"]} for k, v in per_fault.items()},
        "rss_mb_start": rss_start, "rss_mb_end": rss_end,
        "planner_subtasks": obs.subtasks, "mux_holds_sent": mux.get("holds_sent"),
        "mux_timeouts": mux.get("timeouts"), "chunks": len(obs.chunks), "logs": str(log_dir),
    }


def print_table(result: dict) -> None:
    print(f"\nsoak: {result['minutes']} min, a fault every {result['period_s']} s for {result['fault_s']} s "
          f"(model: {result['checkpoint']})")
    print(f"{'fault':<18} {'n':>3} {'hold p50 s':>10} {'hold p99 s':>10} {'recover p50 s':>13} "
          f"{'recover p99 s':>13} {'never held':>10} {'bad chunks':>10}")
    for kind, f in result["faults"].items():
        print(f"{kind:<18} {f['count']:>3} {f['hold_s_p50']:>10.2f} {f['hold_s_p99']:>10.2f} "
              f"{f['recover_s_p50']:>13.2f} {f['recover_s_p99']:>13.2f} {f['never_held']:>10} {f['bad_chunks']:>10}")
    print("RSS MB (start -> end): " + ", ".join(
        f"{n} {result['rss_mb_start'].get(n) or 0:.0f} -> {result['rss_mb_end'].get(n) or 0:.0f}"
        for n in result["rss_mb_start"]) + " (policy_node restarted by kill_policy)")
    print(f"planner subtasks {result['planner_subtasks']}, mux holds {result['mux_holds_sent']}, "
          f"mux timeouts {result['mux_timeouts']}, chunks {result['chunks']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--period", type=float, default=30.0, help="seconds between fault starts")
    parser.add_argument("--fault-s", type=float, default=8.0, help="how long each fault lasts")
    parser.add_argument("--checkpoint", default="", help="model for the policy and planner (default: the config's)")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--domain-id", type=int, default=None)
    args = parser.parse_args()
    if not 0 < args.fault_s < args.period:
        parser.error(f"--fault-s {args.fault_s} must be > 0 and shorter than --period {args.period}")
    result = run(args.minutes, args.period, args.fault_s, args.checkpoint,
                 args.domain_id if args.domain_id is not None else random.randint(150, 200))
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
