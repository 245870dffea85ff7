"""The policy loop drives SimRobot on a virtual clock with an injected inference latency.

Measures what chunk execution does to the motion where chunks meet, for the three ways a
new chunk can join the running one:

    none   latency compensation only (chunk.mode blend, blend_steps 0): the new plan starts
           wherever the model put it
    blend  the configured linear cross-fade (chunking.blend)
    rtc    real-time chunking (model/rtc.py): the model continues the running chunk

Time is virtual: the model runs at once (its own time does not count) and its chunk is
executed `latency_s` later, at the first controller tick at or after that instant, against
the trajectory running then. So the measured latency is exactly the injected one, rounded up
to a tick, and every mode sees the same scenes, noise and timing.

Per run: `seam_gap` (largest |first new command - running command| over the joints, in units
of that joint's per-step rate limit max_velocity * step_duration_s, before the safety
filter; > 1 is a jump the safety filter must rate-limit), and from the simulated joints the
largest position change per controller tick and the largest acceleration within one chunk
step of a boundary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ki_vla_ros.runtime.config import RobotConfig, is_gripper_joint
from ki_vla_ros.runtime.observation import Observation
from ki_vla_ros.runtime.policy import Policy, Predictor
from ki_vla_ros.runtime.policy_loop import PolicyLoop
from ki_vla_ros.sim.tasks import start_reach_episode

ChunkMode = Literal["none", "blend", "rtc"]
CHUNK_MODES: tuple[str, ...] = ("none", "blend", "rtc")


@dataclass(frozen=True)
class ChunkExecutionResult:
    mode: str
    latency_s: float
    chunks: int
    seam_gaps: tuple[float, ...]  # per executed chunk after the first, in per-step rate limits
    boundary_max_step_rad: float  # largest joint change per controller tick near boundaries (arm joints)
    boundary_max_accel_rad_s2: float  # largest joint acceleration near boundaries (arm joints)
    rate_limited_chunks: int  # chunks the safety filter had to rate-limit
    success: bool
    final_distance_m: float

    @property
    def max_seam_gap(self) -> float:
        return max(self.seam_gaps, default=0.0)


def with_chunk_mode(config: RobotConfig, mode: ChunkMode) -> RobotConfig:
    """The config with chunk.mode set; "none" is blend mode without cross-fade."""
    if mode not in CHUNK_MODES:
        raise ValueError(f"mode is {mode!r}; expected one of {list(CHUNK_MODES)}")
    chunk = dataclasses.replace(config.chunk, mode="rtc") if mode == "rtc" else \
        dataclasses.replace(config.chunk, mode="blend", blend_steps=0 if mode == "none" else config.chunk.blend_steps)
    return dataclasses.replace(config, chunk=chunk)


def run_chunk_execution(config: RobotConfig, predictor: Predictor, seed: int, *, mode: ChunkMode,
                        latency_s: float, steps: int = 40, max_image_side_px: int = 96) -> ChunkExecutionResult:
    """The seed's reach episode for `steps` chunk steps, chunks executed latency_s after their observation."""
    config = with_chunk_mode(config, mode)
    dt = config.chunk.step_duration_s
    robot, task = start_reach_episode(config, seed, dt, max_image_side_px=max_image_side_px)
    loop = PolicyLoop(config, Policy(predictor, config))
    slots = sorted(config.cameras, key=lambda c: c.slot)
    tick_s = 1.0 / robot.control_rate_hz
    n_ticks = int(round(steps * dt / tick_s))
    arm = np.array([not is_gripper_joint(j) for j in config.joints])
    max_step = loop.safety.max_step
    pending: tuple | None = None
    positions, boundary_ticks, seams = [], [], []
    chunks = rate_limited = 0
    for i in range(n_ticks + 1):
        now = i * tick_s
        robot.step(now)
        if pending is None and loop.should_request_chunk(now):
            frames = robot.images(now)
            observation = Observation(stamp_s=now, images=tuple(frames[c.name] for c in slots),
                                      state=robot.state_vector(), prompt=task.instruction)
            noise = np.random.default_rng([seed, chunks]).standard_normal((predictor.horizon, predictor.config.action_dim))
            pending = (loop.infer(observation, noise=noise), observation, now + latency_s)
        if pending is not None and now >= pending[2] - 1e-9:
            chunk, observation, _ = pending
            pending = None
            plan = loop.scheduler.plan(chunk, now)
            if plan.trajectory is not None and loop.scheduler.current is not None:
                running = loop.scheduler.reference_at(plan.trajectory.start_time_s - dt)
                seams.append(float(np.max(np.abs(plan.trajectory.actions[0] - running) / max_step)))
            execution = loop.execute(chunk, observation, now)
            chunks += 1
            rate_limited += any("rate-limited" in r for r in execution.reasons)
            for command in execution.commands:
                robot.command_trajectory(command.group, command.start_time_s, command.points, command.joint_names)
            boundary_ticks.append(i)
        positions.append(robot.joint_state()[1][arm])
    pos = np.asarray(positions)
    step = np.abs(np.diff(pos, axis=0))  # [T - 1, J]: change from tick i to i + 1
    accel = np.abs(np.diff(pos, n=2, axis=0)) / tick_s ** 2  # [T - 2, J]: around tick i + 1
    window = int(round(dt / tick_s))
    near = np.zeros(len(pos), dtype=bool)
    for b in boundary_ticks[1:]:  # the first chunk starts from rest: not a seam
        near[max(0, b - 1): b + window + 1] = True
    return ChunkExecutionResult(
        mode=mode, latency_s=latency_s, chunks=chunks, seam_gaps=tuple(seams),
        boundary_max_step_rad=float(step[near[1:]].max(initial=0.0)),
        boundary_max_accel_rad_s2=float(accel[near[1:-1]].max(initial=0.0)),
        rate_limited_chunks=int(rate_limited), success=bool(task.success(robot)),
        final_distance_m=float(robot.distance_to(task.target)))
