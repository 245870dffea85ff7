"""`ki-vla demo`: the whole graph on a simulated robot, for a fixed time, then a summary.

Starts sim_robot + command_mux + policy_node (+ the planner for the mobile config) as
separate processes on their own ROS domain (loopback only), exactly as `ki-vla bringup
CONFIG --sim` would. An observer node in this process then:

1. gives the instruction ("move to the red block"; for mobile also the task),
2. waits for the first action chunk (model load and warm-up) and starts the clock,
3. runs the policy for the first part of the run, switches the mux to teleop (sending
   hold-still teleop commands at the measured pose), then back to policy, which must
   hand off bumplessly,
4. prints what it saw: chunks, latencies, commands, mode switches, hand-off step size,
   the mux's holds and time spent holding, the planner's subtasks and whether the policy's
   chunks followed them, distance of the gripper to the named block.

It fails (exit status 1) when a node exits early (naming it and how), when no chunk or
command appears, and, for a config with the planner, when the planner publishes no subtask
or no chunk is conditioned on one.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

INSTRUCTION = "move to the red block"
TASK = "tidy up the table: start with the red block"


def _pct(values, q):
    return float(np.percentile(values, q)) if values else None


class DemoObserver:
    """Subscribes to what the graph produces and drives the mux; everything it counts is
    what arrived over DDS."""

    def __init__(self, node, config):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from ki_vla_ros.msg import ActionChunk, Subtask
        from ki_vla_ros.ros.conversions import twist_type
        from ki_vla_ros.ros.dds import LATCHED_QOS
        from ki_vla_ros.runtime.topics import ACTION_CHUNK_TOPIC, INSTRUCTION_TOPIC, MODE_TOPIC, TASK_TOPIC

        self.node, self.config = node, config
        self.chunks, self.inference_ms, self.commands = 0, [], 0
        self.modes, self.subtasks, self.status, self.policy_diag, self.mux_diag = [], [], {}, {}, {}
        self.chunk_instructions: dict[str, int] = {}
        self.joint_positions: dict[str, float] = {}
        # (receive time, joint names, positions of every point, measured joints at receipt)
        self.outputs: list[tuple[float, tuple[str, ...], np.ndarray, dict[str, float]]] = []
        self.start_distance_m: float | None = None
        node.create_subscription(ActionChunk, ACTION_CHUNK_TOPIC, self._on_chunk, 10)
        node.create_subscription(Subtask, "/ki_vla/subtask", lambda m: self.subtasks.append(m.subtask), 10)
        node.create_subscription(String, MODE_TOPIC, lambda m: self.modes.append(m.data), LATCHED_QOS)
        node.create_subscription(String, "/sim_robot/status", self._on_status, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        node.create_subscription(JointState, config.joint_states_topic, self._on_joint_state,
                                 qos_profile_sensor_data)
        for group in config.action_groups:
            msg_type = JointTrajectory if group.kind == "joint_trajectory" else twist_type(group)
            node.create_subscription(msg_type, group.controller_topic, self._on_output, 10)
        self.instruction_pub = node.create_publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS)
        self.task_pub = node.create_publisher(String, TASK_TOPIC, LATCHED_QOS)
        self.teleop_pubs = {g.name: node.create_publisher(JointTrajectory, g.teleop_topic, 10)
                            for g in config.action_groups if g.kind == "joint_trajectory"}
        self.switch = {m: node.create_client(Trigger, f"/command_mux/{m}") for m in ("teleop", "policy")}

    def _on_chunk(self, msg) -> None:
        self.chunks += 1
        self.chunk_instructions[msg.instruction] = self.chunk_instructions.get(msg.instruction, 0) + 1
        self.inference_ms.append((msg.inference_latency.sec + msg.inference_latency.nanosec * 1e-9) * 1e3)

    def _on_status(self, msg) -> None:
        self.status.update(json.loads(msg.data))
        if self.start_distance_m is None and "target_distance_m" in self.status:
            self.start_distance_m = self.status["target_distance_m"]

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.endswith(": policy"):
                self.policy_diag = {kv.key: kv.value for kv in status.values}
            elif status.name.endswith(": mux"):
                self.mux_diag = {kv.key: kv.value for kv in status.values}

    def _on_joint_state(self, msg) -> None:
        self.joint_positions.update(zip(msg.name, msg.position))

    def _on_output(self, msg) -> None:
        self.commands += 1
        if hasattr(msg, "points") and msg.points:
            self.outputs.append((time.monotonic(), tuple(msg.joint_names),
                                 np.array([p.positions for p in msg.points]), dict(self.joint_positions)))

    def send_teleop_hold(self) -> None:
        """Teleop that keeps the arm where it is (what a person holding still sends)."""
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        from ki_vla_ros.ros.conversions import s_to_duration

        for group in self.config.action_groups:
            if group.kind != "joint_trajectory" or not all(j in self.joint_positions for j in group.joints):
                continue
            msg = JointTrajectory(joint_names=list(group.joints))
            msg.points = [JointTrajectoryPoint(positions=[self.joint_positions[j] for j in group.joints],
                                               time_from_start=s_to_duration(0.1))]
            self.teleop_pubs[group.name].publish(msg)

    def call_switch(self, mode: str, spin) -> str:
        from std_srvs.srv import Trigger

        client = self.switch[mode]
        spin(lambda: client.service_is_ready(), 20.0, f"/command_mux/{mode}")
        future = client.call_async(Trigger.Request())
        spin(lambda: future.done(), 10.0, f"the reply of /command_mux/{mode}")
        return future.result().message

    def handoff_max_step_rad(self, after_s: float) -> float | None:
        """The bumpless hand-off, measured on the mux output: for each group's first policy
        command after `after_s` (skipping the one-point hold the mux sends on switching), the
        largest joint step from the measured position to its first point and between its
        consecutive points (command_mux.max_step_rad bounds both)."""
        steps, seen = [], set()
        for t, names, points, measured in self.outputs:
            if t < after_s or len(points) < 2 or names in seen or not all(j in measured for j in names):
                continue
            seen.add(names)
            start = np.array([measured[j] for j in names])
            steps.append(float(np.abs(np.diff(np.vstack([start, points]), axis=0)).max()))
        return max(steps) if steps else None


def run_demo(duration_s: float, summary_json: str | None, domain_id: int | None,
             config_name: str = "single_arm", checkpoint: str = "") -> int:
    from ki_vla_ros.ros.bringup import Graph, describe_exit
    from ki_vla_ros.ros.dds import local_graph_environment
    from ki_vla_ros.ros.graph import GraphTimeout, observer_node
    from ki_vla_ros.ros.graph_spec import graph_nodes
    from ki_vla_ros.runtime.config import load_robot_config
    from ki_vla_ros.runtime.model_loading import describe_checkpoint

    config = load_robot_config(config_name)
    checkpoint = checkpoint or config.model.checkpoint
    weights = describe_checkpoint(checkpoint)
    domain_id = domain_id if domain_id is not None else random.randint(101, 200)
    log_dir = Path(tempfile.mkdtemp(prefix="ki_vla_demo_"))
    env = local_graph_environment(domain_id, RCUTILS_LOGGING_DIRECTORY=str(log_dir))
    specs = graph_nodes(config_name, sim=True, checkpoint=checkpoint)
    print(f"[demo] config {config_name}: {', '.join(s.name for s in specs)} on ROS_DOMAIN_ID={domain_id} "
          f"(localhost only); model: {weights}")
    print(f"[demo] node logs: {log_dir}")
    graph = Graph(specs, env=env, log_dir=log_dir)
    context, node, executor = observer_node("ki_vla_demo_observer", domain_id)
    observer = DemoObserver(node, config)

    def check_nodes():
        exited = graph.exited()
        if exited:
            raise RuntimeError("node exited early: " + ", ".join(f"{n} {describe_exit(c)}" for n, c in exited.items())
                               + f"; see logs in {log_dir}")

    def spin(condition, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        while not condition():
            check_nodes()
            if time.monotonic() > deadline:
                raise GraphTimeout(f"timed out after {timeout_s:.0f} s waiting for {what}")
            executor.spin_once(timeout_sec=0.05)

    def spin_for(seconds, every=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            check_nodes()
            if every:
                every()
            executor.spin_once(timeout_sec=0.05)

    code = 1
    try:
        spin(lambda: observer.instruction_pub.get_subscription_count() >= 2, 60.0,
             "policy_node and sim_robot to subscribe to the instruction")
        observer.instruction_pub.publish(observer.instruction_pub.msg_type(data=INSTRUCTION))
        if config.planner.enabled:
            spin(lambda: observer.task_pub.get_subscription_count() >= 1, 60.0, "the planner")
            observer.task_pub.publish(observer.task_pub.msg_type(data=TASK))
        print(f"[demo] instruction: {INSTRUCTION!r}; waiting for the model to load and the first chunk")
        spin(lambda: observer.chunks > 0, 180.0, "the first action chunk")
        policy_s = duration_s * 0.4
        print(f"[demo] first chunk arrived; running the policy for {policy_s:.0f} s")
        spin_for(policy_s)
        print(f"[demo] mux -> teleop: {observer.call_switch('teleop', spin)}")
        spin_for(duration_s * 0.2, every=observer.send_teleop_hold)
        handoff_t = time.monotonic()
        print(f"[demo] mux -> policy: {observer.call_switch('policy', spin)}")
        spin_for(duration_s * 0.4)
        code = 0
    except (GraphTimeout, RuntimeError) as error:
        print(f"[demo] FAILED: {error}")
        handoff_t = time.monotonic()
    finally:
        exit_codes = graph.stop()
        node.destroy_node()
        context.try_shutdown()

    diag = observer.policy_diag
    summary = {
        "config": config_name,
        "model": weights,
        "duration_s": duration_s,
        "chunks_published": observer.chunks,
        "inference_ms_p50": _pct(observer.inference_ms, 50),
        "inference_ms_p99": _pct(observer.inference_ms, 99),
        "obs_to_command_ms_p50": _float(diag.get("obs_to_command_ms_p50")),
        "obs_to_command_ms_p99": _float(diag.get("obs_to_command_ms_p99")),
        "commands_published": observer.commands,
        "mode_switches": max(0, len(observer.modes) - 1),
        "modes_seen": observer.modes,
        "handoff_max_step_rad": observer.handoff_max_step_rad(handoff_t),
        "max_step_rad_allowed": config.mux.max_step_rad,
        "policy_state": diag.get("state"),
        "policy_holds": _float(diag.get("holds")),
        "mux_holds_sent": _float(observer.mux_diag.get("holds_sent")),
        "mux_timeouts": _float(observer.mux_diag.get("timeouts")),
        "mux_holding_s": _float(observer.mux_diag.get("holding_s")),
        "observation_errors": _float(diag.get("observation_errors")),
        "target": observer.status.get("target"),
        "target_distance_m_start": observer.start_distance_m,
        "target_distance_m_end": observer.status.get("target_distance_m"),
        "subtasks_seen": sorted(set(observer.subtasks))[:5],
        "chunks_following_a_subtask": sum(n for text, n in observer.chunk_instructions.items()
                                          if text in set(observer.subtasks)),
        "node_exit_codes": exit_codes,
    }
    _print_summary(summary)
    if summary_json:
        Path(summary_json).write_text(json.dumps(summary, indent=2))
        print(f"[demo] summary written to {summary_json}")
    if code == 0 and (observer.chunks == 0 or observer.commands == 0):
        print("[demo] FAILED: the graph produced no chunks or no commands")
        code = 1
    if code == 0 and config.planner.enabled and not observer.subtasks:
        print(f"[demo] FAILED: the planner is enabled but published no subtask for the task {TASK!r}")
        code = 1
    if code == 0 and config.planner.enabled and not summary["chunks_following_a_subtask"]:
        print(f"[demo] FAILED: the planner published {sorted(set(observer.subtasks))[:3]} but no action chunk "
              f"was conditioned on a subtask (chunk instructions: {sorted(observer.chunk_instructions)[:3]})")
        code = 1
    return code


def _float(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if value != value else value  # NaN -> None


def _print_summary(summary: dict) -> None:
    print("[demo] summary")
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        print(f"  {key:<{width}}  {value}")
