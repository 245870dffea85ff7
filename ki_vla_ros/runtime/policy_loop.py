"""Everything the policy node does between incoming messages and outgoing commands.

ROS-free, so the live node and the rosbag replay evaluator run the same steps:

    add(input, stamp, payload)  -> approximate-time sync of cameras + joint states (+ odom)
    take_observation(now)       -> the newest synchronized set as an Observation (never older
                                   than sync.max_age_s, never used twice)
    infer(observation)          -> policy.infer: ActionChunk (model time measured); with
                                   chunk.mode rtc guided toward the running trajectory
    execute(chunk, obs, now)    -> latency compensation, blending with the running chunk,
                                   safety filter, per-group commands; or a hold with reasons

Payloads are already converted to numpy by the caller: an RGB uint8 image per camera,
`JointStatePayload` for joint states, a {vx, vy, wz} mapping for odometry.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ki_vla_ros.runtime.action_chunk import ActionChunk
from ki_vla_ros.runtime.chunking import ChunkScheduler, DelayEstimate, Trajectory
from ki_vla_ros.runtime.commands import JointTrajectoryCommand, TwistCommand, joint_trajectory_commands, twist_at
from ki_vla_ros.runtime.config import RobotConfig
from ki_vla_ros.runtime.observation import Observation, ObservationAssembler, ObservationError
from ki_vla_ros.runtime.policy import Policy, PolicyError
from ki_vla_ros.runtime.safety import SafetyFilter, SafetyStatus, measured_reference
from ki_vla_ros.runtime.sync import ApproximateTimeSync, SyncedSet, SyncResult, SyncStatus

JOINT_STATES = "joint_states"
ODOM = "odom"


@dataclass(frozen=True)
class JointStatePayload:
    names: tuple[str, ...]
    positions: np.ndarray  # float64 [N], same order as names


@dataclass(frozen=True)
class Execution:
    """The outcome of executing one chunk: commands to send, or why nothing is sent."""

    chunk: ActionChunk
    trajectory: Trajectory | None  # what is now being executed (None: nothing sent)
    commands: tuple[JointTrajectoryCommand, ...] = ()
    status: str = "ok"  # ok | clipped | hold | skipped
    dropped_steps: int = 0
    reasons: tuple[str, ...] = ()

    @property
    def sends_motion(self) -> bool:
        return self.trajectory is not None


@dataclass
class LoopCounters:
    observations: int = 0
    observation_errors: int = 0
    chunks: int = 0
    holds: int = 0
    skipped: int = 0
    last_error: str = ""
    # The current error of each source (an input name, "sync" or "observation"), cleared by
    # the source's next good message: one bad input often makes the others go stale, and
    # last_error alone would hide the cause.
    errors: dict = field(default_factory=dict)
    sync_results: dict = field(default_factory=dict)

    def note_error(self, source: str, message: str) -> None:
        self.last_error = message
        self.errors[source] = message


def sync_inputs(config: RobotConfig) -> list[str]:
    """Synchronized inputs: every camera, the joint states, and odometry for a mobile base."""
    inputs = [c.name for c in config.cameras] + [JOINT_STATES]
    if config.odom_topic and config.base_group is not None:
        inputs.append(ODOM)
    return inputs


class PolicyLoop:
    def __init__(self, config: RobotConfig, policy: Policy | None):
        self.config = config
        self.policy = policy
        self.sync = ApproximateTimeSync.from_config(config.sync, sync_inputs(config))
        self.assembler = ObservationAssembler(config)
        self.scheduler = ChunkScheduler(config.chunk)
        self.delay = DelayEstimate(config.chunk.step_duration_s, config.chunk.rtc_margin_steps)
        self.safety = SafetyFilter.from_robot_config(config)
        self.instruction = config.default_instruction
        self.counters = LoopCounters()
        self._lock = threading.Lock()
        self._latest: SyncedSet | None = None
        self._last_used_stamp_s = float("-inf")

    # ------------------------------------------------------------------ inputs
    def add(self, input_name: str, stamp_s: float, payload: Any, now_s: float) -> SyncResult:
        result = self.sync.add(input_name, stamp_s, payload, now_s)
        with self._lock:
            key = result.status.value
            self.counters.sync_results[key] = self.counters.sync_results.get(key, 0) + 1
            if result.status in (SyncStatus.STALE, SyncStatus.REJECTED):
                if result.reason:
                    self.counters.note_error(input_name, f"{input_name}: {result.reason}")
            else:
                self.counters.errors.pop(input_name, None)
                if result.status is SyncStatus.EMITTED and result.synced is not None:
                    self._latest = result.synced
        return result

    def set_instruction(self, text: str) -> None:
        with self._lock:
            self.instruction = text.strip()

    # ------------------------------------------------------------ observation
    def take_observation(self, now_s: float) -> Observation | None:
        """The newest synchronized set, once, if it is not older than sync.max_age_s.

        Raises ObservationError (NaN, missing joint, bad image...) for a set that cannot be
        used; that set is consumed so the same error is reported once.
        """
        with self._lock:
            synced, instruction = self._latest, self.instruction
            if synced is None or synced.newest_stamp_s <= self._last_used_stamp_s:
                return None
            self._last_used_stamp_s = synced.newest_stamp_s
        age_s = now_s - synced.oldest_stamp_s
        if age_s > self.config.sync.max_age_s:
            self.record_error(f"newest synchronized observation is {age_s:.3f} s old; "
                              f"sync.max_age_s is {self.config.sync.max_age_s} s; not acted on", source="sync")
            raise ObservationError(self.counters.last_error)
        return self.assemble(synced, instruction)

    def assemble(self, synced: SyncedSet, instruction: str) -> Observation:
        payloads: Mapping[str, Any] = synced.payloads
        joints: JointStatePayload = payloads[JOINT_STATES]
        images = {c.name: payloads[c.name] for c in self.config.cameras}
        try:
            observation = self.assembler.assemble(
                stamp_s=synced.newest_stamp_s, images=images, joint_names=joints.names,
                joint_positions=joints.positions, prompt=instruction,
                base_velocity=payloads.get(ODOM))
        except ObservationError as error:
            self.record_error(str(error))
            raise
        with self._lock:
            self.counters.observations += 1
            self.counters.errors.pop("observation", None)
            self.counters.errors.pop("sync", None)
        return observation

    def record_error(self, message: str, source: str = "observation") -> None:
        """Count an observation that could not be used (e.g. an image the caller could not
        decode; source: that camera) and keep its message for diagnostics."""
        with self._lock:
            self.counters.observation_errors += 1
            self.counters.note_error(source, message)

    # --------------------------------------------------------------- execution
    def should_request_chunk(self, now_s: float) -> bool:
        return self.scheduler.should_request_chunk(now_s)

    def infer(self, observation: Observation, noise=None) -> ActionChunk:
        """policy.infer; with chunk.mode rtc and a trajectory running, guided toward it with the
        estimated delay (DelayEstimate). Raises PolicyError like policy.infer."""
        running = self.scheduler.current if self.config.chunk.mode == "rtc" else None
        try:
            if running is None:
                chunk = self.policy.infer(observation, noise=noise)
            else:
                chunk = self.policy.infer(observation, noise=noise, running=running, delay_steps=self.delay.steps())
        except PolicyError as error:  # kept for diagnostics until the next chunk (e.g. a lost policy server)
            with self._lock:
                self.counters.note_error("policy", str(error))
            raise
        with self._lock:
            self.counters.errors.pop("policy", None)
        return chunk

    def execute(self, chunk: ActionChunk, observation: Observation, now_s: float) -> Execution:
        """Turn a chunk into commands that start now (or a hold, with reasons)."""
        self.delay.add(now_s - chunk.stamp_s)
        plan = self.scheduler.plan(chunk, now_s)
        if plan.trajectory is None:
            self.counters.skipped += 1
            return Execution(chunk, None, status="skipped", dropped_steps=plan.dropped_steps,
                             reasons=(plan.reason,))
        dt = self.config.chunk.step_duration_s
        running = self.scheduler.reference_at(plan.trajectory.start_time_s - dt)
        reference = running if running is not None else measured_reference(observation, self.config)
        result = self.safety.filter(plan.trajectory.actions, reference)
        if result.status is SafetyStatus.HOLD:
            self.scheduler.hold()
            self.counters.holds += 1
            return Execution(chunk, None, status="hold", dropped_steps=plan.dropped_steps,
                             reasons=result.reasons)
        trajectory = plan.trajectory.with_actions(result.actions)
        self.scheduler.commit(trajectory, chunk.stamp_s)
        self.counters.chunks += 1
        return Execution(chunk, trajectory, tuple(joint_trajectory_commands(trajectory, self.config)),
                         status=result.status.value, dropped_steps=plan.dropped_steps,
                         reasons=result.reasons)

    def hold(self) -> None:
        self.scheduler.hold()

    def twist_now(self, now_s: float) -> TwistCommand | None:
        """Base velocity to stream now (None without a base group or a running trajectory)."""
        trajectory = self.scheduler.current
        if trajectory is None or self.config.base_group is None:
            return None
        if now_s > trajectory.end_time_s + self.config.chunk.step_duration_s:
            return None  # the chunk ran out: stop streaming, the base controller times out to zero
        return twist_at(trajectory, self.config, now_s)


def joint_state_problem(names: Sequence[str], positions: Sequence[float], joints: Sequence[str]) -> str:
    """Why a sensor_msgs/JointState cannot be used for `joints`, or "" when it can.

    Checked on arrival so that diagnostics name the joint states as the input at fault;
    joints the robot config does not use may be anything.
    """
    if len(positions) != len(names):
        return f"{len(names)} names but {len(positions)} positions"
    for name, value in zip(names, positions):
        if name in joints and not math.isfinite(value):
            return f"position of joint '{name}' is {value}; expected a finite value"
    return ""


def joint_state_payload(names: Sequence[str], positions: Sequence[float]) -> JointStatePayload:
    return JointStatePayload(tuple(names), np.asarray(positions, dtype=np.float64))
