"""Teleop/policy command multiplexer: the logic the `command_mux` node wraps.

Per action group, commands arrive from two sources, teleop and policy; one stream goes to
the group's controller. The mode picks the source:

    TELEOP   forward teleop commands, ignore the policy's
    POLICY   forward policy commands, ignore teleop's
    HOLD     forward nothing; every group holds at its measured position

Per group the output is either FORWARDING the active source or HOLDING. A group enters
HOLDING (and one hold command is emitted by the next `tick`, once per entry) when:

- the mode is switched (any switch: the previous source's trajectory must not keep
  running while the new source has not spoken yet);
- the active source falls silent for longer than its timeout (teleop_timeout_s /
  policy_timeout_s) — silent means no *valid* command: dropped commands (NaN, wrong
  joints) do not keep a source alive;
- at start-up every group is HOLDING without a hold command (the controllers already
  hold; there is nothing to stop).

A group that is already HOLDING does not re-enter: a switch then only updates its reason,
so a group never commanded since start-up gets no hold command at all.

Leaving HOLDING is automatic, in modes TELEOP and POLICY: the next valid command from the
active source resumes the group, but only through the bumpless hand-off below, which
needs a fresh measured joint state. If the joint state is missing, stale or NaN, the
command is dropped with that reason and the group stays in hold. The hold reason is kept
in `status()` so the node can publish why the robot stopped.

Bumpless hand-off (`bumpless_start`): the first command forwarded after a hold is
rewritten to start at the measured joint state, `now_s`, and to make no joint step larger
than max_step_rad between consecutive points:

- the segment measured -> first point is split into n = ceil(max|step| / max_step_rad)
  equal steps and takes max|step| / ramp speed, ramp speed = max_step_rad /
  ramp_step_duration_s (0.3 rad at 0.05 rad per 0.1 s: 6 steps in 0.6 s), at least one
  control period, or longer when the command's own first point is due later;
  the rest of the command keeps its own timing, shifted by however much the ramp delayed
  its first point;
- any later segment whose step exceeds max_step_rad is split into equal steps within its
  own duration (the motion is the same; its speed is the source's business: the policy's
  safety filter limits it upstream);
- rewritten commands carry velocities (when the command had any) by finite differences
  over the new times, zero at the first and last point.

Ramping rather than rejecting: a policy that starts 0.3 rad away from the arm is normal
(the operator moved it), and rejecting would leave the robot in hold forever.

While FORWARDING, each new command is checked for continuity with the stream already
sent: if its first point is more than max_step_rad away from where the previous output is
at that same instant, it is rewritten the same way, starting from the previous output's
position at now_s (a new policy chunk arriving in the middle of a hand-off ramp, or a
teleop jump). A continuous stream (blended chunks) passes unchanged.

Hold commands: one point at the measured positions with zero velocity, reached
ramp_step_duration_s after now_s. (A point at time_from_start 0 stamped now would "end in
the past" on arrival, which joint_trajectory_controller rejects; an empty trajectory is
rejected too.) Without a fresh joint state the hold freezes the previous output where it
is at now_s, and the reason says so; base_twist groups hold with a zero Twist.

Times are float seconds passed in (`now_s`); a command with start_time_s == 0.0 starts
"on receipt", as header.stamp 0 does for joint_trajectory_controller. Every public method
takes one lock: the node calls it from subscription, timer and service callbacks.
"""

from __future__ import annotations

import enum
import math
import threading
from dataclasses import dataclass, replace
from typing import Sequence, Union

import numpy as np

from ki_vla_ros.runtime.commands import JointTrajectoryCommand, TrajectoryPoint, TwistCommand
from ki_vla_ros.runtime.config import ActionGroupConfig, MuxConfig, RobotConfig
from ki_vla_ros.runtime.joint_state_cache import JointStateCache
from ki_vla_ros.runtime.observation import ObservationError

Command = Union[JointTrajectoryCommand, TwistCommand]

_STEP_TOLERANCE = 1e-9  # a step equal to max_step_rad up to rounding is not a violation


class MuxMode(enum.Enum):
    TELEOP = "teleop"
    POLICY = "policy"
    HOLD = "hold"


class CommandSource(enum.Enum):
    TELEOP = "teleop"
    POLICY = "policy"


class Disposition(enum.Enum):
    FORWARDED = "forwarded"  # publish decision.command on the group's controller topic
    IGNORED = "ignored"  # from a source that is not active in this mode
    DROPPED = "dropped"  # from the active source, but invalid or not startable; see reason


@dataclass(frozen=True)
class CommandDecision:
    disposition: Disposition
    group: str
    command: Command | None = None  # what to publish (possibly rewritten); None unless FORWARDED
    reason: str = ""
    inserted_points: int = 0  # ramp points added by a bumpless rewrite

    @property
    def forwarded(self) -> bool:
        return self.disposition is Disposition.FORWARDED


@dataclass(frozen=True)
class HoldCommand:
    """A hold to publish on the group's controller topic, and why the group holds."""

    group: str
    command: Command
    reason: str


@dataclass(frozen=True)
class GroupStatus:
    group: str
    holding: bool
    reason: str  # why it holds ("" while forwarding)
    silent_s: float | None  # time since the active source's last forwarded command
    holding_s: float = 0.0  # total time held after having moved (start-up wait not counted)


@dataclass(frozen=True)
class MuxCounters:
    mode_switches: int = 0
    forwarded: int = 0
    ignored: int = 0
    dropped: int = 0
    bumpless_rewrites: int = 0
    holds_sent: int = 0
    timeouts: int = 0


@dataclass(frozen=True)
class MuxStatus:
    mode: MuxMode
    groups: tuple[GroupStatus, ...]
    counters: MuxCounters

    @property
    def mode_switches(self) -> int:
        return self.counters.mode_switches


@dataclass
class _SentTrajectory:
    """The last joint trajectory sent for a group, in absolute time, for continuity checks."""

    joint_names: tuple[str, ...]
    times_s: np.ndarray  # [N] absolute, increasing
    positions: np.ndarray  # [N, J]

    def sample(self, time_s: float, joint_names: tuple[str, ...]) -> np.ndarray:
        order = [self.joint_names.index(j) for j in joint_names]
        values = [np.interp(time_s, self.times_s, self.positions[:, j]) for j in order]
        return np.array(values, dtype=np.float64)


@dataclass
class _GroupState:
    config: ActionGroupConfig
    holding: bool = True
    reason: str = ""
    hold_owed: bool = False
    last_forward_s: float | None = None  # active source's last forwarded command
    sent: _SentTrajectory | None = None  # the last trajectory sent, for continuity
    hold_since_s: float | None = None  # when the current hold began (None: start-up or moving)
    held_s: float = 0.0  # finished holds, summed

    def holding_s(self, now_s: float) -> float:
        return self.held_s + (now_s - self.hold_since_s if self.hold_since_s is not None else 0.0)


class CommandMux:
    """Chooses, per action group, between teleop commands, policy commands and a hold."""

    def __init__(self, config: RobotConfig, joint_states: JointStateCache | None = None):
        self.config: MuxConfig = config.mux
        self.control_period_s = 1.0 / config.control_rate_hz
        self.joint_states = joint_states if joint_states is not None else JointStateCache()
        self._lock = threading.Lock()
        self._mode = MuxMode(config.mux.initial_mode)
        self._groups = {g.name: _GroupState(g) for g in config.action_groups}
        for state in self._groups.values():
            state.reason = (f"start-up in {self._mode.value} mode" if self._mode is MuxMode.HOLD
                            else f"start-up: waiting for the first {self._mode.value} command")
        self._counters = MuxCounters()

    # ------------------------------------------------------------------ inputs

    @property
    def mode(self) -> MuxMode:
        with self._lock:
            return self._mode

    def switch(self, mode: MuxMode | str, now_s: float) -> tuple[bool, str]:
        """Service semantics: (ok, message). Every group enters hold until the new source speaks."""
        wanted = _parse_mode(mode)
        if wanted is None:
            return False, (f"unknown mode {mode!r}; expected one of "
                           f"{', '.join(m.value for m in MuxMode)}")
        with self._lock:
            previous = self._mode
            if wanted is previous:
                return True, f"already in {wanted.value} mode"
            self._mode = wanted
            self._bump(mode_switches=1)
            waiting = ("" if wanted is MuxMode.HOLD
                       else f"; holding until the first {wanted.value} command (bumpless start)")
            reason = f"switched from {previous.value} to {wanted.value} at {now_s:.3f} s{waiting}"
            for state in self._groups.values():
                self._enter_hold(state, reason, now_s)
                state.last_forward_s = None
            return True, f"switched from {previous.value} to {wanted.value}{waiting}"

    def on_joint_state(self, names: Sequence[str], positions: Sequence[float], stamp_s: float,
                       velocities: Sequence[float] = ()) -> int:
        """Measured joint state (sensor_msgs/JointState fields); see JointStateCache.update."""
        return self.joint_states.update(names, positions, stamp_s, velocities)

    def on_command(self, source: CommandSource | str, command: Command, now_s: float) -> CommandDecision:
        """A command from teleop or the policy, received at now_s -> what to publish."""
        source = CommandSource(source) if isinstance(source, str) else source
        with self._lock:
            state = self._groups.get(command.group)
            if state is None:
                return self._drop(command.group, f"command for unknown action group "
                                                 f"'{command.group}'; groups: {sorted(self._groups)}")
            if self._mode is MuxMode.HOLD or self._mode.value != source.value:
                self._bump(ignored=1)
                return CommandDecision(Disposition.IGNORED, command.group,
                                       reason=f"mode is {self._mode.value}; {source.value} "
                                              "commands are not forwarded")
            problem = _invalid(command, state.config)
            if problem:
                return self._drop(command.group, f"{source.value} command for group "
                                                 f"'{command.group}' dropped: {problem}")
            if isinstance(command, TwistCommand):
                return self._forward(state, command, now_s, "", 0)
            silent = state.last_forward_s is not None and \
                now_s - state.last_forward_s > self._timeout(source)
            if state.holding or silent:
                return self._resume(state, source, command, now_s)
            return self._continue(state, command, now_s)

    def tick(self, now_s: float) -> list[HoldCommand]:
        """Call at the control rate: applies source timeouts, returns hold commands to publish."""
        with self._lock:
            if self._mode is not MuxMode.HOLD:
                source = CommandSource(self._mode.value)
                timeout = self._timeout(source)
                for name, state in self._groups.items():
                    if state.holding or state.last_forward_s is None:
                        continue
                    silent = now_s - state.last_forward_s
                    if silent > timeout:
                        self._bump(timeouts=1)
                        self._enter_hold(state, f"{source.value} commands for group '{name}' silent "
                                                f"for {silent:.3f} s (> {source.value}_timeout_s = "
                                                f"{timeout} s); holding until they resume", now_s)
            holds = [self._hold_command(state, now_s) for state in self._groups.values()
                     if state.hold_owed]
            return [hold for hold in holds if hold is not None]

    def status(self, now_s: float) -> MuxStatus:
        with self._lock:
            groups = tuple(
                GroupStatus(name, state.holding, state.reason if state.holding else "",
                            None if state.last_forward_s is None else now_s - state.last_forward_s,
                            state.holding_s(now_s))
                for name, state in self._groups.items())
            return MuxStatus(self._mode, groups, self._counters)

    @property
    def counters(self) -> MuxCounters:
        with self._lock:
            return self._counters

    # ------------------------------------------------------------------ decisions

    def _resume(self, state: _GroupState, source: CommandSource, command: JointTrajectoryCommand,
                now_s: float) -> CommandDecision:
        try:
            measured = self.joint_states.snapshot(command.joint_names, now_s,
                                                  self.config.joint_state_max_age_s)
        except ObservationError as exc:
            # Stay in hold (a hold owed is still sent by tick); the next command retries.
            was_forwarding = not state.holding
            if was_forwarding:
                self._enter_hold(state, f"{source.value} resumed after a silence but no usable "
                                        f"joint state: {exc}", now_s)
            return self._drop(command.group, f"cannot start {source.value} command for group "
                                             f"'{command.group}' bumplessly: {exc}; holding")
        rewritten, inserted = self._bumpless(command, measured.positions, now_s)
        self._bump(bumpless_rewrites=1)
        return self._forward(state, rewritten, now_s,
                             f"hand-off to {source.value}: starts at the measured joint state, "
                             f"{inserted} ramp point(s) inserted", inserted)

    def _continue(self, state: _GroupState, command: JointTrajectoryCommand,
                  now_s: float) -> CommandDecision:
        first = np.asarray(command.points[0].positions, dtype=np.float64)
        start_s = _effective_start_s(command, now_s)
        first_time_s = max(start_s + command.points[0].time_from_start_s, now_s)
        if state.sent is None:  # forwarding always follows a hand-off, which records what it sent
            return self._forward(state, command, now_s, "", 0)
        gap = float(np.max(np.abs(first - state.sent.sample(first_time_s, command.joint_names))))
        if gap <= self.config.max_step_rad + _STEP_TOLERANCE:
            return self._forward(state, command, now_s, "", 0)
        reference = state.sent.sample(now_s, command.joint_names)
        rewritten, inserted = self._bumpless(command, reference, now_s)
        self._bump(bumpless_rewrites=1)
        return self._forward(state, rewritten, now_s,
                             f"first point {gap:.4f} rad from the stream already sent (> max_step_rad "
                             f"{self.config.max_step_rad}); ramped with {inserted} point(s)", inserted)

    def _forward(self, state: _GroupState, command: Command, now_s: float, reason: str,
                 inserted: int) -> CommandDecision:
        state.holding, state.hold_owed, state.reason = False, False, ""
        state.last_forward_s = now_s
        if state.hold_since_s is not None:
            state.held_s += now_s - state.hold_since_s
            state.hold_since_s = None
        if isinstance(command, JointTrajectoryCommand):
            state.sent = _sent(command, now_s)
        self._bump(forwarded=1)
        return CommandDecision(Disposition.FORWARDED, command.group, command, reason, inserted)

    def _drop(self, group: str, reason: str) -> CommandDecision:
        self._bump(dropped=1)
        return CommandDecision(Disposition.DROPPED, group, reason=reason)

    def _enter_hold(self, state: _GroupState, reason: str, now_s: float) -> None:
        if not state.holding:
            state.holding, state.hold_owed = True, True
            state.hold_since_s = now_s
        state.reason = reason

    def _hold_command(self, state: _GroupState, now_s: float) -> HoldCommand | None:
        group = state.config
        state.hold_owed = False
        if group.kind == "base_twist":
            self._bump(holds_sent=1)
            return HoldCommand(group.name, TwistCommand(group.name, now_s), state.reason)
        try:
            positions = self.joint_states.snapshot(group.joints, now_s,
                                                   self.config.joint_state_max_age_s).positions
            where = "at the measured position"
        except ObservationError as exc:
            if state.sent is None:
                # Nothing was ever sent: the controller still holds its own start-up position.
                state.reason += f"; no hold command sent (no usable joint state: {exc})"
                return None
            positions = state.sent.sample(now_s, group.joints)
            where = f"at the last commanded position (no usable joint state: {exc})"
        state.reason = f"{state.reason}; holding {where}"
        hold = JointTrajectoryCommand(group.name, group.joints, now_s, (TrajectoryPoint(
            self.config.ramp_step_duration_s, tuple(map(float, positions)),
            (0.0,) * len(group.joints)),))
        state.sent = _sent(hold, now_s)
        self._bump(holds_sent=1)
        return HoldCommand(group.name, hold, state.reason)

    def _bumpless(self, command: JointTrajectoryCommand, start_positions: np.ndarray,
                  now_s: float) -> tuple[JointTrajectoryCommand, int]:
        return bumpless_start(command, start_positions, now_s, self.config.max_step_rad,
                              self.config.max_step_rad / self.config.ramp_step_duration_s,
                              self.control_period_s)

    def _timeout(self, source: CommandSource) -> float:
        return (self.config.teleop_timeout_s if source is CommandSource.TELEOP
                else self.config.policy_timeout_s)

    def _bump(self, **increments: int) -> None:
        self._counters = replace(self._counters, **{k: getattr(self._counters, k) + v
                                                    for k, v in increments.items()})


# ---------------------------------------------------------------------- pure functions


def bumpless_start(command: JointTrajectoryCommand, start_positions: np.ndarray, now_s: float,
                   max_step_rad: float, ramp_speed_rad_s: float, min_ramp_s: float
                   ) -> tuple[JointTrajectoryCommand, int]:
    """Rewrite `command` to start at start_positions [J] (command.joint_names order) at now_s,
    with no step between consecutive points above max_step_rad, reaching its first point
    no faster than ramp_speed_rad_s and no sooner than min_ramp_s; see the module docstring.
    Returns the new command (start_time_s = now_s) and the number of inserted points."""
    start = np.asarray(start_positions, dtype=np.float64)
    targets = np.array([p.positions for p in command.points], dtype=np.float64)  # [K, J]
    due_s = _effective_start_s(command, now_s) + np.array([p.time_from_start_s for p in command.points])
    positions, times = [start], [0.0]
    previous, previous_due, elapsed, inserted = start, now_s, 0.0, 0
    for k in range(len(targets)):
        step = targets[k] - previous
        distance = float(np.max(np.abs(step)))
        n = max(1, math.ceil(distance / max_step_rad - _STEP_TOLERANCE))
        duration = due_s[k] - previous_due
        if k == 0:  # the ramp from where the robot is
            duration = max(duration, distance / ramp_speed_rad_s, min_ramp_s)
        for i in range(1, n + 1):
            positions.append(previous + step * (i / n))
            times.append(elapsed + duration * (i / n))
        inserted += n - 1
        elapsed += duration
        previous, previous_due = targets[k], due_s[k]
    positions_array = np.array(positions)
    has_velocities = any(p.velocities for p in command.points)
    velocities = np.zeros_like(positions_array)
    if has_velocities and len(times) >= 3:
        t = np.array(times)
        velocities[1:-1] = (positions_array[2:] - positions_array[:-2]) / (t[2:] - t[:-2])[:, None]
    points = tuple(
        TrajectoryPoint(float(times[i]), tuple(map(float, positions_array[i])),
                        tuple(map(float, velocities[i])) if has_velocities else ())
        for i in range(len(times)))
    return JointTrajectoryCommand(command.group, command.joint_names, now_s, points), inserted


def _parse_mode(mode: MuxMode | str) -> MuxMode | None:
    if isinstance(mode, MuxMode):
        return mode
    if isinstance(mode, str):
        for candidate in MuxMode:
            if mode.strip().lower() == candidate.value:
                return candidate
    return None


def _invalid(command: Command, group: ActionGroupConfig) -> str:
    """Why a command must not reach the controller ("" if it may)."""
    if group.kind == "base_twist":
        if not isinstance(command, TwistCommand):
            return f"a {type(command).__name__} for a base_twist group; expected a Twist"
        for name in ("time_s", "linear_x", "linear_y", "angular_z"):
            value = getattr(command, name)
            if not math.isfinite(value):
                return f"{name} is {value}; expected a finite number"
        return ""
    if not isinstance(command, JointTrajectoryCommand):
        return f"a {type(command).__name__} for a joint_trajectory group; expected a JointTrajectory"
    names = tuple(command.joint_names)
    if len(set(names)) != len(names) or set(names) != set(group.joints):
        return f"joints {list(names)}; expected exactly the group's joints {list(group.joints)} (any order)"
    if not command.points:
        return "the trajectory has no points (joint_trajectory_controller rejects it)"
    if not math.isfinite(command.start_time_s):
        return f"start time is {command.start_time_s}; expected a finite time"
    previous_s = -math.inf
    for k, point in enumerate(command.points):
        if len(point.positions) != len(names):
            return f"point {k} has {len(point.positions)} positions for {len(names)} joints"
        if len(point.velocities) not in (0, len(names)):
            return f"point {k} has {len(point.velocities)} velocities for {len(names)} joints"
        for values, what in ((point.positions, "position"), (point.velocities, "velocity")):
            for joint, value in zip(names, values):
                if not math.isfinite(value):
                    return f"point {k} {what} of '{joint}' is {value}; expected a finite number"
        t = point.time_from_start_s
        if not math.isfinite(t) or t < 0 or t <= previous_s:
            return (f"point {k} time_from_start is {t} s; expected >= 0 and increasing "
                    f"(previous {previous_s} s)")
        previous_s = t
    return ""


def _effective_start_s(command: JointTrajectoryCommand, now_s: float) -> float:
    """header.stamp 0 means 'start on receipt' (joint_trajectory_controller semantics)."""
    return now_s if command.start_time_s == 0.0 else command.start_time_s


def _sent(command: JointTrajectoryCommand, now_s: float) -> _SentTrajectory:
    times = _effective_start_s(command, now_s) + np.array([p.time_from_start_s for p in command.points])
    positions = np.array([p.positions for p in command.points], dtype=np.float64)
    return _SentTrajectory(tuple(command.joint_names), times, positions)
