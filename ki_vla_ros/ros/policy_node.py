"""policy_node: synchronized cameras + joint states -> action chunks -> trajectory commands.

A managed (lifecycle) node. configure: read the robot config, load and warm up the model,
create subscriptions and (lifecycle) publishers. activate: start acting. deactivate: stop,
and freeze every group at its currently commanded position (see _hold). cleanup: release
everything configure created, so configure can run again. With the `autostart` parameter
(default true) the node configures and activates itself; if that configure fails, the
process reports ERROR on /diagnostics and exits with status 3 (bringup then stops the graph
with the robot holding).

/diagnostics (1 Hz) is OK only while the node is commanding; whenever it is not, the level
is WARN (inactive, waiting) or ERROR (configure failed, rejected instruction, an input at
fault), and the message names the cause: runtime.input_health picks the root-cause input
(a bad image is reported as that camera, not as the joint states it made stale).

Instructions (/ki_vla/instruction, or the planner's /ki_vla/subtask) are checked when they
arrive (runtime.instruction): an empty one or one over the model's prompt budget is
rejected with an ERROR diagnostic, and the node holds until a usable one arrives.

On a stop request (node_main calls prepare_to_exit) the node stops its inference thread and
holds before the process exits.

Parameters: config, checkpoint, autostart, torch_threads (read-only), and the policy_node
block of the config as typed parameters (chunk.*, sync.*, model.*, default_instruction; see
ros.parameters), read at configure and changeable only while unconfigured.

Everything between messages and commands happens in runtime.PolicyLoop (the same code
the rosbag evaluator runs); this file only moves data between ROS and that loop.
Inference runs on a worker thread so the executor keeps receiving messages meanwhile.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import replace

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import Odometry
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.timer import Timer
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from ki_vla_ros.msg import ActionChunk as ActionChunkMsg
from ki_vla_ros.msg import Subtask
from ki_vla_ros.ros import conversions as conv
from ki_vla_ros.ros import parameters as params
from ki_vla_ros.ros.dds import LATCHED_QOS
from ki_vla_ros.runtime.chunking import Trajectory, chunk_period_warning
from ki_vla_ros.runtime.commands import TwistCommand, joint_trajectory_commands
from ki_vla_ros.runtime.config import ConfigError, RobotConfig, load_robot_config
from ki_vla_ros.runtime.input_health import InputHealth
from ki_vla_ros.runtime.instruction import InstructionError, check_instruction, shorten
from ki_vla_ros.runtime.model_loading import load_predictor, set_torch_threads
from ki_vla_ros.runtime.observation import ObservationError
from ki_vla_ros.runtime.policy import Policy, PolicyError
from ki_vla_ros.runtime.policy_loop import (JOINT_STATES, ODOM, PolicyLoop, joint_state_payload, joint_state_problem,
                                            sync_inputs)
from ki_vla_ros.runtime.sync import SyncStatus
from ki_vla_ros.runtime.topics import ACTION_CHUNK_TOPIC, INSTRUCTION_TOPIC, SUBTASK_TOPIC

# Exit status of the process when the autostart configure fails.
CONFIGURE_FAILED_EXIT = 3
# How long a stopping node waits for its hold commands to be acknowledged.
EXIT_ACK_TIMEOUT_S = 1.0
# Input checks while a chunk runs (see _watchdog), and the shortest silence that is a fault.
WATCHDOG_PERIOD_S = 0.05
MIN_SILENT_S = 0.5


def percentile_ms(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


class PolicyNode(LifecycleNode):
    def __init__(self, node_name: str = "policy_node", *, predictor=None, context=None, **node_kwargs):
        super().__init__(node_name, context=context, **node_kwargs)
        self._active = threading.Event()  # before the parameters: a bad one ends __init__ early
        self._stop = threading.Event()
        self._new_observation = threading.Event()
        self._worker: threading.Thread | None = None
        self.declare_parameter("config", "single_arm", params.CONFIG)
        self.declare_parameter("checkpoint", "", params.fixed(
            "model checkpoint directory or 'tiny'; empty = model.checkpoint from the config"))
        self.declare_parameter("autostart", True, params.fixed("configure and activate on startup"))
        self.declare_parameter("torch_threads", 0, params.TORCH_THREADS)
        self._declare_tunables()
        self._shared_predictor = predictor  # one model for policy + planner in one process
        self.config: RobotConfig | None = None
        self.policy: Policy | None = None
        self.loop: PolicyLoop | None = None
        self.inference_ms: deque[float] = deque(maxlen=1000)
        self.obs_to_command_ms: deque[float] = deque(maxlen=1000)
        self.chunk_times_s: deque[float] = deque(maxlen=50)
        self.commands_published = 0
        # Node overhead, excluding the model: per-message callback time (conversion + sync)
        # and per-observation time outside predict_chunk (assembly, checks, execution,
        # publishing). benchmarks/bench_node_overhead.py reads these.
        self.callback_ms: dict[str, deque[float]] = {}
        self.act_overhead_ms: deque[float] = deque(maxlen=5000)
        self.state = "unconfigured"
        self.configure_error = ""
        self.instruction_error = ""
        self.health: InputHealth | None = None
        self.last_command_s: float | None = None  # node clock, last trajectory or twist sent
        self._interfaces: list = []  # what configure created and cleanup destroys
        self.trajectory_pubs: dict = {}
        self.twist_pub = None
        # Diagnostics outlive the lifecycle: a failed configure must still be reported.
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", QoSProfile(depth=10))
        self.create_timer(1.0, self._publish_diagnostics)
        if self.get_parameter("autostart").value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    def _declare_tunables(self) -> None:
        """chunk.*, sync.*, model.*, default_instruction as typed parameters (ros.parameters),
        defaults from the config's YAML. They are read at configure, so they can be changed
        while the node is unconfigured; a config that does not load is reported by configure."""
        try:
            params.declare_config_parameters(self, "policy_node", load_robot_config(self.get_parameter("config").value),
                                             busy=self._why_not_now)
        except ConfigError:
            pass

    def _why_not_now(self) -> str:
        return "" if self.loop is None else (
            f"the policy node reads it at configure and is {self.state}: deactivate and clean up the node, "
            "set it, then configure again")

    # ------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.config = params.parameter_values(self, "policy_node",
                                                  load_robot_config(self.get_parameter("config").value))
            checkpoint = self.get_parameter("checkpoint").value or None
            self.get_logger().info(f"configuring: loading model "
                                   f"{checkpoint or self.config.model.checkpoint!r} for robot '{self.config.name}'")
            threads = set_torch_threads(self.get_parameter("torch_threads").value)
            predictor = self._shared_predictor or load_predictor(self.config, checkpoint=checkpoint)
            self.policy = Policy(predictor, self.config)
            t0 = time.perf_counter()
            warm_inference_s = predictor.warmup()
            self.get_logger().info(f"model ready on {predictor.device}, {threads} CPU thread(s) (warm-up "
                                   f"{(time.perf_counter() - t0) * 1e3:.0f} ms); robot '{self.config.name}'")
        except Exception as error:  # any reason the model cannot run is a configure failure
            self.configure_error = f"configure failed: {error}"
            self.get_logger().error(self.configure_error)
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ""
        self.loop = PolicyLoop(self.config, self.policy)
        self.health = InputHealth(self._input_topics(), self.config.sync.max_age_s,
                                  silent_after_s=max(MIN_SILENT_S, 2.0 * self.config.sync.max_age_s))
        warning = chunk_period_warning(self.config, warm_inference_s)
        if warning:
            self.get_logger().warning(warning)
        self._create_interfaces()
        self._stop.clear()
        self._worker = threading.Thread(target=self._run_worker, name="policy_inference", daemon=True)
        self._worker.start()
        self.state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active.set()
        self.state = "waiting"
        self.health.start(self.now_s())
        self.last_command_s = None
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active.clear()
        self._hold("deactivated")
        self.state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._shutdown_worker()
        self._destroy_interfaces()
        self.loop = self.policy = self.health = None
        self.state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._shutdown_worker()
        return TransitionCallbackReturn.SUCCESS

    def prepare_to_exit(self) -> None:
        """A stop request (node_main, context still valid): stop inferring, hold, and wait until
        the hold is delivered. The mux then holds too when it stops."""
        was_active = self._active.is_set()
        self._active.clear()
        self._shutdown_worker()
        if was_active and self.loop is not None:
            self._hold("node stopping")
            for publisher in [*self.trajectory_pubs.values(), self.twist_pub]:
                if publisher is not None:
                    publisher.wait_for_all_acked(Duration(seconds=EXIT_ACK_TIMEOUT_S))

    def destroy_node(self) -> None:
        self._shutdown_worker()
        super().destroy_node()

    def _shutdown_worker(self) -> None:
        self._stop.set()
        self._new_observation.set()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None

    # ------------------------------------------------------------ interfaces
    def _input_topics(self) -> dict[str, str]:
        c = self.config
        topics = {cam.name: cam.topic for cam in c.cameras}
        topics[JOINT_STATES] = c.joint_states_topic
        if ODOM in sync_inputs(c):
            topics[ODOM] = c.odom_topic
        return topics

    def _create_interfaces(self) -> None:
        """Subscriptions, lifecycle publishers and timers; each kept for cleanup to destroy."""
        c = self.config
        keep = self._interfaces.append
        for camera in c.cameras:
            msg_type = Image if camera.message_type == "raw" else CompressedImage
            keep(self.create_subscription(msg_type, camera.topic,
                                          lambda msg, name=camera.name: self._on_image(name, msg),
                                          qos_profile_sensor_data))
        keep(self.create_subscription(JointState, c.joint_states_topic, self._on_joint_state,
                                      qos_profile_sensor_data))
        if ODOM in sync_inputs(c):
            keep(self.create_subscription(Odometry, c.odom_topic, self._on_odom, qos_profile_sensor_data))
        keep(self.create_subscription(String, INSTRUCTION_TOPIC, lambda m: self._set_prompt(m.data), LATCHED_QOS))
        keep(self.create_subscription(Subtask, SUBTASK_TOPIC, lambda m: self._set_prompt(m.subtask), 10))
        self.chunk_pub = self.create_lifecycle_publisher(ActionChunkMsg, ACTION_CHUNK_TOPIC, 10)
        keep(self.chunk_pub)
        self.trajectory_pubs = {g.name: self.create_lifecycle_publisher(JointTrajectory, g.policy_topic, 10)
                                for g in c.action_groups if g.kind == "joint_trajectory"}
        self._interfaces.extend(self.trajectory_pubs.values())
        self.twist_pub = None
        if c.base_group is not None:
            self.twist_pub = self.create_lifecycle_publisher(conv.twist_type(c.base_group), c.base_group.policy_topic, 10)
            keep(self.twist_pub)
            keep(self.create_timer(1.0 / c.control_rate_hz, self._stream_twist))
        keep(self.create_timer(WATCHDOG_PERIOD_S, self._watchdog))

    def _destroy_interfaces(self) -> None:
        for entity in self._interfaces:
            if isinstance(entity, Timer):
                self.destroy_timer(entity)
            elif isinstance(entity, LifecyclePublisher):
                self.destroy_lifecycle_publisher(entity)
            else:
                self.destroy_subscription(entity)
        self._interfaces.clear()
        self.trajectory_pubs, self.twist_pub = {}, None

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _report(self, message: str) -> None:
        self.get_logger().warning(message, throttle_duration_sec=2.0)

    def _add(self, name: str, stamp_s: float, payload) -> None:
        result = self.loop.add(name, stamp_s, payload, self.now_s())
        if result.reason and result.status in (SyncStatus.REJECTED, SyncStatus.STALE):
            self._report(f"{name}: {result.reason}")
        if result.status is SyncStatus.EMITTED:
            self._new_observation.set()

    def _record_callback(self, name: str, t0: float) -> None:
        self.callback_ms.setdefault(name, deque(maxlen=20000)).append((time.perf_counter() - t0) * 1e3)

    def _on_image(self, camera: str, msg) -> None:
        t0 = time.perf_counter()
        stamp_s = conv.time_to_s(msg.header.stamp)
        self.health.arrived(camera, stamp_s, self.now_s())
        try:
            image = conv.image_to_rgb(msg, camera)
        except ObservationError as error:
            self.loop.record_error(str(error), source=camera)
            self.health.bad(camera, str(error), self.now_s())
            self._report(str(error))
            return
        self.health.good(camera)
        self._add(camera, stamp_s, image)
        self._record_callback(camera, t0)

    def _on_joint_state(self, msg: JointState) -> None:
        t0 = time.perf_counter()
        stamp_s = conv.time_to_s(msg.header.stamp)
        self.health.arrived(JOINT_STATES, stamp_s, self.now_s())
        problem = joint_state_problem(msg.name, msg.position, self.config.joints)
        if problem:
            problem = f"joint state ({self.config.joint_states_topic}): {problem}"
            self.loop.record_error(problem, source=JOINT_STATES)
            self.health.bad(JOINT_STATES, problem, self.now_s())
            self._report(f"joint state ignored: {problem}")
            return
        self.health.good(JOINT_STATES)
        self._add(JOINT_STATES, stamp_s, joint_state_payload(msg.name, msg.position))
        self._record_callback(JOINT_STATES, t0)

    def _on_odom(self, msg: Odometry) -> None:
        stamp_s = conv.time_to_s(msg.header.stamp)
        self.health.arrived(ODOM, stamp_s, self.now_s())
        twist = msg.twist.twist
        self._add(ODOM, stamp_s, {"vx": twist.linear.x, "vy": twist.linear.y, "wz": twist.angular.z})

    def _set_prompt(self, text: str) -> None:
        try:
            task = check_instruction(text, self.policy.predictor)
        except InstructionError as error:
            if not self.instruction_error:
                self.get_logger().error(f"instruction rejected, holding until a usable one arrives: {error}")
            self.instruction_error = str(error)
            self.loop.set_instruction("")
            return
        if task != self.loop.instruction or self.instruction_error:
            self.get_logger().info(f"prompt: '{shorten(task)}'")
        self.instruction_error = ""
        self.loop.set_instruction(task)

    # ----------------------------------------------------------------- acting
    def _run_worker(self) -> None:
        while not self._stop.is_set():
            self._new_observation.wait(timeout=0.05)
            self._new_observation.clear()
            if self._stop.is_set() or not self._active.is_set():
                continue
            if not self.loop.should_request_chunk(self.now_s()):
                continue
            try:
                self._act_once()
            except Exception as error:  # keep the node alive; never leave motion running blindly
                self._hold(f"unexpected error: {type(error).__name__}: {error}")

    def _act_once(self) -> None:
        if self.instruction_error:
            self._hold(f"instruction rejected: {self.instruction_error}")
            return
        t0 = time.perf_counter()
        try:
            observation = self.loop.take_observation(self.now_s())
        except ObservationError as error:
            self._hold(str(error))
            return
        if observation is None:
            return
        try:
            chunk = self.loop.infer(observation)
        except PolicyError as error:
            self._hold(str(error))
            return
        self.inference_ms.append(chunk.inference_latency_s * 1e3)
        execution = self.loop.execute(chunk, observation, self.now_s())
        self.chunk_pub.publish(conv.action_chunk_msg(chunk))
        self.chunk_times_s.append(time.monotonic())
        if not execution.sends_motion:
            self.state = execution.status
            self._report(f"chunk not executed ({execution.status}): {'; '.join(execution.reasons)}")
            if execution.status == "hold":
                self._hold("; ".join(execution.reasons))
            return
        if self._active.is_set():
            for command in execution.commands:
                self.trajectory_pubs[command.group].publish(conv.joint_trajectory_msg(command))
                self.commands_published += 1
            self.last_command_s = self.now_s()
            self.obs_to_command_ms.append((self.now_s() - observation.stamp_s) * 1e3)
            self.act_overhead_ms.append((time.perf_counter() - t0) * 1e3 - chunk.timings.inference_ms)
            self.state = "running"

    def _watchdog(self) -> None:
        """Hold as soon as an input is at fault while a chunk is running: without it the robot
        would run out the chunk and then wait for the mux's policy_timeout_s."""
        if not self._active.is_set() or self.loop.scheduler.current is None:
            return
        fault = self.health.fault(self.now_s())
        if fault:
            self._hold(f"input fault: {fault}")

    def _stream_twist(self) -> None:
        if not self._active.is_set() or self.twist_pub is None:
            return
        command = self.loop.twist_now(self.now_s())
        if command is not None:
            self.twist_pub.publish(conv.twist_msg(command, self.config.base_group.stamped))
            self.commands_published += 1
            self.last_command_s = self.now_s()

    def _hold(self, reason: str) -> None:
        """Stop the policy's motion: freeze every group where the running chunk has it now.

        joint_trajectory_controller rejects empty trajectories and points that end in the
        past, so the hold is one point at the currently commanded position, due one step
        from now. With no chunk running there is no policy motion to stop. A mobile base
        gets a zero Twist.
        """
        self.state = "hold"
        now_s = self.now_s()
        commanded = self.loop.scheduler.reference_at(now_s)
        self.loop.hold()
        self._report(f"holding: {reason}")
        if commanded is not None:
            trajectory = Trajectory(now_s, self.config.chunk.step_duration_s, self.config.action_names,
                                    commanded[None, :])
            for command in joint_trajectory_commands(trajectory, self.config):
                held = replace(command, points=tuple(
                    replace(p, time_from_start_s=self.config.chunk.step_duration_s) for p in command.points))
                self.trajectory_pubs[command.group].publish(conv.joint_trajectory_msg(held))
        if self.twist_pub is not None:
            self.twist_pub.publish(conv.twist_msg(TwistCommand(self.config.base_group.name, now_s),
                                                  self.config.base_group.stamped))

    # ------------------------------------------------------------ diagnostics
    def diagnosis(self) -> tuple[int, str]:
        """(level, message): OK only while commanding; otherwise why not, naming the cause."""
        if self.configure_error:
            return DiagnosticStatus.ERROR, self.configure_error
        if self.loop is None:
            return DiagnosticStatus.WARN, "unconfigured: not commanding"
        if not self._active.is_set():
            return DiagnosticStatus.WARN, "inactive: not commanding (activate to run)"
        if self.instruction_error:
            return DiagnosticStatus.ERROR, f"holding: instruction rejected: {self.instruction_error}"
        now_s = self.now_s()
        window_s = self.config.mux.policy_timeout_s
        if self.last_command_s is not None and now_s - self.last_command_s <= window_s:
            return DiagnosticStatus.OK, self.state
        idle = ("no command yet" if self.last_command_s is None
                else f"no command for {now_s - self.last_command_s:.1f} s")
        fault = self.health.fault(now_s)
        if fault:
            return DiagnosticStatus.ERROR, f"not commanding ({idle}): {fault}"
        cause = self.loop.counters.last_error or "waiting for a synchronized observation"
        return DiagnosticStatus.WARN, f"not commanding ({idle}): {cause}"

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: policy"
        status.hardware_id = self.config.name if self.config else ""
        status.level, status.message = self.diagnosis()
        values = {"state": self.state}
        if self.loop is not None:
            counters = self.loop.counters
            rate = 0.0
            if len(self.chunk_times_s) >= 2:
                rate = (len(self.chunk_times_s) - 1) / max(self.chunk_times_s[-1] - self.chunk_times_s[0], 1e-9)
            values.update({
                "instruction": shorten(self.loop.instruction),
                "chunks": counters.chunks,
                "chunk_rate_hz": f"{rate:.2f}",
                "holds": counters.holds,
                "observation_errors": counters.observation_errors,
                "last_error": shorten(counters.last_error, 300),
                "inference_ms_p50": f"{percentile_ms(self.inference_ms, 50):.2f}",
                "inference_ms_p99": f"{percentile_ms(self.inference_ms, 99):.2f}",
                "obs_to_command_ms_p50": f"{percentile_ms(self.obs_to_command_ms, 50):.2f}",
                "obs_to_command_ms_p99": f"{percentile_ms(self.obs_to_command_ms, 99):.2f}",
                "commands_published": self.commands_published,
                **{f"sync.{result}": count for result, count in sorted(counters.sync_results.items())},
                **{f"error.{source}": shorten(message, 300) for source, message in sorted(counters.errors.items())},
            })
        status.values = conv.key_values(values)
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self.diagnostics_pub.publish(msg)


def main(args=None) -> None:
    from ki_vla_ros.ros.node_main import run_nodes

    run_nodes(args, build=lambda argv: build_policy_process(argv))


def build_policy_process(argv):
    """policy_node, and with --with-planner the planner in the same process sharing one model.

    If the autostart configure failed, the ERROR has been published on /diagnostics; wait
    (briefly) until subscribers have it and exit with CONFIGURE_FAILED_EXIT, so that bringup
    and the demo stop the graph and say why.
    """
    with_planner = "--with-planner" in argv
    policy = PolicyNode()
    if policy.configure_error:
        policy.diagnostics_pub.wait_for_all_acked(Duration(seconds=EXIT_ACK_TIMEOUT_S))
        sys.stderr.write(f"policy_node: {policy.configure_error}\n")
        policy.destroy_node()
        raise SystemExit(CONFIGURE_FAILED_EXIT)
    nodes = [policy]
    if with_planner and policy.policy is not None:
        from ki_vla_ros.ros.planner_node import PlannerNode

        nodes.append(PlannerNode(predictor=policy.policy.predictor))
    return nodes


if __name__ == "__main__":
    main(sys.argv)
