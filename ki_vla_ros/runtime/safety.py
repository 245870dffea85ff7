"""The last check before a command leaves the policy: limits from config, NaN never passes.

For every action dim the config gives a range and a largest rate of change:

    joints:        position in [lower, upper],          |step| <= max_velocity * dt
    base dims:     velocity in [-max_vel, +max_vel],    |step| <= max_acceleration * dt

`SafetyFilter.filter(actions, reference)` clips every step into the range, then walks
the steps in order, letting each move at most max_rate * dt from the previous one (for
step 0: from `reference`, the measured joint state or the command being executed, so
the first command of a policy starts where the robot is). Clipping and
rate limiting are reported, per dim. A non-finite value anywhere, in the actions or the
reference, means HOLD: no actions at all, and a reason. There is no partial repair of NaN.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from ki_vla_ros.runtime.config import RobotConfig
from ki_vla_ros.runtime.observation import Observation


class SafetyStatus(enum.Enum):
    OK = "ok"  # passed unchanged
    CLIPPED = "clipped"  # changed to respect a limit; actions are safe to send
    HOLD = "hold"  # nothing may be sent; hold the current position


@dataclass(frozen=True)
class SafetyResult:
    status: SafetyStatus
    actions: np.ndarray | None  # float64 [K, D] (or [D]) to command; None on HOLD
    reasons: tuple[str, ...] = ()

    @property
    def hold(self) -> bool:
        return self.status is SafetyStatus.HOLD


@dataclass(frozen=True)
class ActionLimits:
    """Per action dim: range and largest change per second, in action-vector order."""

    names: tuple[str, ...]
    lower: np.ndarray  # [D]
    upper: np.ndarray  # [D]
    max_rate_per_s: np.ndarray  # [D]

    @classmethod
    def from_robot_config(cls, config: RobotConfig) -> "ActionLimits":
        lower, upper, rate = [], [], []
        for joint in config.joints:
            limits = config.joint_limits[joint]
            lower.append(limits.lower)
            upper.append(limits.upper)
            rate.append(limits.max_velocity)
        base = config.base_group
        if base is not None:
            lower += [-v for v in base.max_velocity]
            upper += list(base.max_velocity)
            rate += list(base.max_acceleration)
        return cls(config.action_names, np.array(lower), np.array(upper), np.array(rate))


class SafetyFilter:
    """Applies ActionLimits to commands spaced step_duration_s apart."""

    def __init__(self, limits: ActionLimits, step_duration_s: float):
        if step_duration_s <= 0:
            raise ValueError(f"step_duration_s is {step_duration_s}; expected > 0")
        self.limits = limits
        self.step_duration_s = step_duration_s
        self.max_step = limits.max_rate_per_s * step_duration_s

    @classmethod
    def from_robot_config(cls, config: RobotConfig) -> "SafetyFilter":
        return cls(ActionLimits.from_robot_config(config), config.chunk.step_duration_s)

    def filter(self, actions: np.ndarray, reference: np.ndarray) -> SafetyResult:
        """actions [K, D] (or one command [D]) after `reference` [D] -> SafetyResult."""
        names = self.limits.names
        dims = len(names)
        actions = np.asarray(actions, dtype=np.float64)
        reference = np.asarray(reference, dtype=np.float64)
        single = actions.ndim == 1
        steps = actions[None] if single else actions
        if steps.ndim != 2 or steps.shape[1] != dims or steps.shape[0] == 0:
            return _hold(f"actions have shape {actions.shape}; expected [steps >= 1, {dims}]")
        if reference.shape != (dims,):
            return _hold(f"reference has shape {reference.shape}; expected [{dims}]")
        bad = ~np.isfinite(steps)
        if bad.any():
            k, d = map(int, np.argwhere(bad)[0])
            return _hold(f"action '{names[d]}' is {steps[k, d]} at step {k} "
                         f"({int(bad.sum())} non-finite value(s)); holding")
        bad_ref = ~np.isfinite(reference)
        if bad_ref.any():
            d = int(np.argmax(bad_ref))
            return _hold(f"reference for '{names[d]}' is {reference[d]}; holding")

        # Clip the target into range first, then rate-limit towards it: every step then
        # obeys the rate limit, even from a reference outside the range (it is walked in).
        targets = np.clip(steps, self.limits.lower, self.limits.upper)
        clipped = (targets != steps).sum(axis=0)
        out = np.empty_like(steps)
        rate_limited = np.zeros(dims, dtype=int)
        previous = reference
        for k in range(steps.shape[0]):
            delta = targets[k] - previous
            limited = np.clip(delta, -self.max_step, self.max_step)
            rate_limited += limited != delta
            out[k] = previous + limited
            previous = out[k]

        reasons = []
        for d in np.flatnonzero(rate_limited):
            reasons.append(f"'{names[d]}' rate-limited to {self.max_step[d]:.4g} per step "
                           f"({self.limits.max_rate_per_s[d]:.4g}/s) at {rate_limited[d]} step(s)")
        for d in np.flatnonzero(clipped):
            reasons.append(f"'{names[d]}' clipped to [{self.limits.lower[d]:.4g}, "
                           f"{self.limits.upper[d]:.4g}] at {clipped[d]} step(s)")
        outside = (reference < self.limits.lower) | (reference > self.limits.upper)
        for d in np.flatnonzero(outside):
            reasons.append(f"'{names[d]}' reference {reference[d]:.4g} is outside "
                           f"[{self.limits.lower[d]:.4g}, {self.limits.upper[d]:.4g}]; "
                           "moving into range at the rate limit")
        status = SafetyStatus.CLIPPED if reasons else SafetyStatus.OK
        return SafetyResult(status, out[0] if single else out, tuple(reasons))


def measured_reference(observation: Observation, config: RobotConfig) -> np.ndarray:
    """Where the robot is, in action layout: joint positions, then the base velocity
    (measured from odometry, or 0 for a base without it: a base at rest is the safe guess).
    The reference for the first command after start-up or a hold."""
    base = config.base_group
    reference = np.asarray(observation.state, dtype=np.float64)
    if base is None:
        return reference
    velocity = (np.zeros(len(base.dims)) if observation.base_velocity is None
                else np.asarray(observation.base_velocity, dtype=np.float64))
    return np.concatenate([reference, velocity])


def _hold(reason: str) -> SafetyResult:
    return SafetyResult(SafetyStatus.HOLD, None, (reason,))
