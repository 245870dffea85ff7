"""A bag as an episode: the observations the live node would have formed, and what came after.

Observations go through the live node's own path, runtime PolicyLoop (ApproximateTimeSync
with the config's sync settings, the max-age check, ObservationAssembler), fed in the bag's
receive order with `now_s` = the receive time, so slop, queue size and max age act as they
did on the robot; prompts come from the recorded instruction/subtask topics in the same order.

Targets are what the robot was told (or did) after each observation, per action group:

    joint_trajectory group  JointTrajectory on its controller_topic (the command_mux output):
                            point times = header.stamp (receive time when 0) + time_from_start;
                            a newer trajectory replaces an older one from its first point on,
                            as in joint_trajectory_controller; linear between points, the
                            last point held until the bag ends.
                            No commands recorded -> the measured /joint_states positions.
    base_twist group        Twist or TwistStamped on controller_topic (held until the next one), or the
                            measured odometry twist.

A chunk step at time t is compared only where its group's target exists at t (no
extrapolation before the first command or past the last joint state).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np

from ki_vla_ros.eval.bag_io import (
    COMPRESSED_IMAGE, IMAGE, JOINT_STATE, JOINT_TRAJECTORY, ODOMETRY, STRING, SUBTASK, Bag, BagError,
    BagMessage, duration_s, twist_command_type)
from ki_vla_ros.runtime.config import ActionGroupConfig, RobotConfig
from ki_vla_ros.runtime.observation import (
    Observation, ObservationError, image_from_compressed, image_from_raw)
from ki_vla_ros.runtime.policy_loop import JOINT_STATES, ODOM, PolicyLoop, joint_state_payload
from ki_vla_ros.runtime.policy_loop import sync_inputs as policy_loop_inputs
from ki_vla_ros.runtime.sync import SyncStatus
from ki_vla_ros.runtime.topics import INSTRUCTION_TOPIC, SUBTASK_TOPIC

# Graph topics that are not in the robot config (DESIGN.md section 3).


TargetChoice = Literal["auto", "commands", "measured"]


def sync_inputs(config: RobotConfig) -> dict[str, str]:
    """topic -> PolicyLoop input name (the cameras by name, joint states, odometry)."""
    topics = {c.name: c.topic for c in config.cameras}
    topics[JOINT_STATES] = config.joint_states_topic
    topics[ODOM] = config.odom_topic
    return {topics[name]: name for name in policy_loop_inputs(config)}


def observation_topics(config: RobotConfig) -> dict[str, str]:
    """topic -> expected message type for everything an observation is made of."""
    topics = {c.topic: IMAGE if c.message_type == "raw" else COMPRESSED_IMAGE for c in config.cameras}
    topics[config.joint_states_topic] = JOINT_STATE
    if config.odom_topic and config.base_group:
        topics[config.odom_topic] = ODOMETRY
    return topics


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Timeline:
    """Recorded values of some action dims over time.

    values[i] holds from times_s[i]; between samples linear (positions) or held (hold=True,
    velocity commands). Defined on [times_s[0], valid_until_s].
    """

    names: tuple[str, ...]
    times_s: np.ndarray  # float64 [N], increasing
    values: np.ndarray  # float64 [N, len(names)]
    valid_until_s: float
    hold: bool
    source: str  # e.g. "commands on /arm_controller/joint_trajectory"

    def sample(self, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """times [T] -> values [T, K], valid [T]."""
        times_s = np.asarray(times_s, dtype=np.float64)
        valid = (times_s >= self.times_s[0] - 1e-9) & (times_s <= self.valid_until_s + 1e-9)
        if self.hold:
            index = np.clip(np.searchsorted(self.times_s, times_s + 1e-9, side="right") - 1, 0, None)
            return self.values[index], valid
        out = np.empty((len(times_s), self.values.shape[1]))
        for k in range(self.values.shape[1]):
            out[:, k] = np.interp(times_s, self.times_s, self.values[:, k])
        return out, valid


@dataclass(frozen=True)
class EpisodeTargets:
    """Per action dim, what was recorded; sample() gives [T, D] targets and where they exist."""

    action_names: tuple[str, ...]
    parts: tuple[tuple[str, tuple[int, ...], Timeline], ...]  # (group, action indices, timeline)

    def sample(self, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        times_s = np.asarray(times_s, dtype=np.float64)
        values = np.full((len(times_s), len(self.action_names)), np.nan)
        valid = np.zeros(values.shape, dtype=bool)
        for _, indices, timeline in self.parts:
            part_values, part_valid = timeline.sample(times_s)
            values[:, indices] = part_values
            valid[:, indices] = part_valid[:, None]
        return values, valid

    @property
    def sources(self) -> dict[str, str]:
        """action group -> where its targets come from."""
        return {group: timeline.source for group, _, timeline in self.parts}


def _trajectory_timeline(bag: Path, topic: str, group: ActionGroupConfig,
                         messages: Sequence[BagMessage], end_s: float) -> Timeline:
    """JointTrajectory messages -> one timeline; a newer trajectory cuts off an older one."""
    trajectories = []
    for m in messages:
        names = list(m.msg.joint_names)
        if sorted(names) != sorted(group.joints):
            raise BagError(bag, f"commands joints {names}; action group '{group.name}' of the config "
                                f"has joints {list(group.joints)}", topic)
        order = [names.index(j) for j in group.joints]
        if not m.msg.points:
            continue  # an empty trajectory stops the controller; nothing to compare against
        times, rows = [], []
        for i, point in enumerate(m.msg.points):
            positions = np.asarray(point.positions, dtype=np.float64)
            if positions.shape != (len(names),) or not np.all(np.isfinite(positions)):
                raise BagError(bag, f"trajectory at {m.stamp_s:.3f} s point {i} has positions "
                                    f"{positions.tolist()}; expected {len(names)} finite values "
                                    f"for {names}", topic)
            times.append(m.stamp_s + duration_s(point.time_from_start))
            rows.append(positions[order])
        trajectories.append((np.asarray(times), np.asarray(rows)))
    if not trajectories:
        raise BagError(bag, "has JointTrajectory messages but none with points", topic)
    trajectories.sort(key=lambda tr: tr[0][0])
    times_parts, value_parts = [], []
    for (times, rows), following in zip(trajectories, trajectories[1:] + [None]):
        keep = times < following[0][0] if following is not None else np.ones(len(times), bool)
        times_parts.append(times[keep])
        value_parts.append(rows[keep])
    times = np.concatenate(times_parts)
    return Timeline(names=tuple(group.joints), times_s=times, values=np.concatenate(value_parts),
                    valid_until_s=max(end_s, float(times[-1])), hold=False, source=f"commands on {topic}")


def _twist_timeline(topic: str, group: ActionGroupConfig, messages: Sequence[BagMessage],
                    end_s: float, base_names: tuple[str, ...], measured: bool) -> Timeline:
    def twist_of(msg: Any) -> Any:  # Odometry, TwistStamped or Twist
        return msg.twist.twist if measured else getattr(msg, "twist", msg)

    fields = {"vx": lambda t: t.linear.x, "vy": lambda t: t.linear.y, "wz": lambda t: t.angular.z}
    times = np.asarray([m.stamp_s for m in messages])
    values = np.asarray([[fields[d](twist_of(m.msg)) for d in group.dims] for m in messages], np.float64)
    order = np.argsort(times, kind="stable")
    return Timeline(names=base_names, times_s=times[order], values=values[order],
                    valid_until_s=end_s if not measured else float(times.max()), hold=not measured,
                    source=f"{'odometry' if measured else 'commands'} on {topic}")


def _joint_state_timeline(bag: Path, config: RobotConfig, group: ActionGroupConfig,
                          states: tuple[np.ndarray, np.ndarray]) -> Timeline:
    times, positions = states
    columns = [config.joints.index(j) for j in group.joints]
    return Timeline(names=tuple(group.joints), times_s=times, values=positions[:, columns],
                    valid_until_s=float(times[-1]), hold=False,
                    source=f"measured joint states on {config.joint_states_topic}")


# ----------------------------------------------------------------------------- the episode


@dataclass(frozen=True)
class ReplayedObservation:
    observation: Observation
    available_time_s: float  # when the live node would have had it (receive clock, in stamp time)

    @property
    def age_s(self) -> float:
        """How old the observation already was when the set completed (transport delay)."""
        return max(0.0, self.available_time_s - self.observation.stamp_s)


@dataclass
class ReplayCounters:
    sets_emitted: int = 0
    observations_used: int = 0
    skipped_between_requests: int = 0
    sync_stale: int = 0
    sync_rejected: int = 0
    invalid_observations: int = 0
    reasons: Counter = field(default_factory=Counter)  # why observations were not formed

    def as_dict(self) -> dict:
        return {
            "sets_emitted": self.sets_emitted, "observations_used": self.observations_used,
            "skipped_between_requests": self.skipped_between_requests,
            "sync_stale_messages": self.sync_stale, "sync_rejected_messages": self.sync_rejected,
            "invalid_observations": self.invalid_observations,
            "reasons": dict(self.reasons.most_common(10)),
        }


class EpisodeReplay:
    """One bag: checks it against the config, loads targets, then streams observations.

    every_s: the node asks for a chunk only every execute_steps * step_duration_s, so by
        default an observation is used at most that often; 0 uses every synchronized set.
    instruction: the prompt for every observation; default: as the node would have had it
        (the last recorded /ki_vla/instruction or /ki_vla/subtask, else default_instruction).
    targets: 'auto' (commands where recorded, else measured), 'commands' (error without
        them) or 'measured'.
    """

    def __init__(self, bag_path: str | Path, config: RobotConfig, *, every_s: float | None = None,
                 instruction: str | None = None, targets: TargetChoice = "auto"):
        self.path = Path(bag_path)
        self.config = config
        self.every_s = config.chunk.execute_steps * config.chunk.step_duration_s if every_s is None \
            else float(every_s)
        self.instruction = instruction
        self.counters = ReplayCounters()
        self._stamp_leads: dict[str, list[float]] = {}  # topic -> header stamp - receive time (s)
        self.bag = Bag(self.path)
        try:
            self.bag.require_topics(observation_topics(config))
            for topic in observation_topics(config):
                if self.bag.topic_count(topic) == 0:
                    raise BagError(self.path, "is in the bag but has no messages", topic)
            self.targets, self.clock_offset_s = self._load_context(targets)
        except BaseException:
            self.bag.close()
            raise

    def close(self) -> None:
        self.bag.close()

    def __enter__(self) -> "EpisodeReplay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def message_count(self) -> int:
        return self.bag.message_count(sync_inputs(self.config))

    # -- pass 1: everything but images ---------------------------------------------------

    def _load_context(self, choice: TargetChoice) -> tuple[EpisodeTargets, float]:
        config, bag = self.config, self.bag
        topics = bag.topics
        command_topics: dict[str, ActionGroupConfig] = {}
        for group in config.action_groups:
            expected = JOINT_TRAJECTORY if group.kind == "joint_trajectory" else twist_command_type(group)
            topic = group.controller_topic
            if choice != "measured" and topic in topics and bag.topic_count(topic) > 0:
                bag.require_topics({topic: expected})
                command_topics[topic] = group
            elif choice == "commands":
                raise BagError(self.path, f"has no {expected} commands for action group "
                                          f"'{group.name}' (targets='commands')", topic)
        wanted = [config.joint_states_topic, *command_topics]
        if config.odom_topic and config.base_group:
            wanted.append(config.odom_topic)

        by_topic: dict[str, list[BagMessage]] = {t: [] for t in wanted}
        state_times, state_rows, clock_gaps = [], [], []
        for m in bag.messages(wanted):
            if m.topic == config.joint_states_topic:
                state = self._joint_positions(m)
                if state is None:
                    continue
                state_times.append(m.stamp_s)
                state_rows.append(state)
                clock_gaps.append(m.receive_time_s - m.stamp_s)
            else:
                by_topic[m.topic].append(m)
        if not state_times:
            raise BagError(self.path, "has no joint state with a finite position for every "
                                      f"configured joint {list(config.joints)}", config.joint_states_topic)
        end_s = max(state_times[-1], bag.end_time_s - float(np.median(clock_gaps)))
        order = np.argsort(state_times, kind="stable")
        states = (np.asarray(state_times)[order], np.asarray(state_rows)[order])

        parts = []
        action_index = {n: i for i, n in enumerate(config.action_names)}
        for group in config.action_groups:
            topic = group.controller_topic
            if group.kind == "joint_trajectory":
                timeline = (_trajectory_timeline(self.path, topic, group, by_topic[topic], end_s)
                            if topic in command_topics else
                            _joint_state_timeline(self.path, config, group, states))
            else:
                names = tuple(f"{group.name}_{d}" for d in group.dims)
                if topic in command_topics:
                    timeline = _twist_timeline(topic, group, by_topic[topic], end_s, names, measured=False)
                elif config.odom_topic and by_topic.get(config.odom_topic):
                    timeline = _twist_timeline(config.odom_topic, group, by_topic[config.odom_topic],
                                               end_s, names, measured=True)
                else:
                    raise BagError(self.path, f"has no Twist commands and no odometry for base group "
                                              f"'{group.name}'; nothing to compare its actions with", topic)
            parts.append((group.name, tuple(action_index[n] for n in timeline.names), timeline))
        targets = EpisodeTargets(config.action_names, tuple(parts))

        # Stamps from another clock (sim time, a robot PC without NTP) would make every
        # message look stale; then measure age against the stamps' own clock.
        gap = float(np.median(clock_gaps))
        clock_offset_s = gap if abs(gap) > config.sync.max_age_s else 0.0
        return targets, clock_offset_s

    def _joint_positions(self, m: BagMessage) -> np.ndarray | None:
        names = list(m.msg.name)
        missing = [j for j in self.config.joints if j not in names]
        if missing:
            raise BagError(self.path, f"joint names {names} lack the configured joints {missing} "
                                      f"(config {self.config.source})", m.topic)
        positions = np.asarray(m.msg.position, dtype=np.float64)
        if len(positions) != len(names):
            raise BagError(self.path, f"joint state at {m.stamp_s:.3f} s has {len(names)} names and "
                                      f"{len(positions)} positions; expected one per name", m.topic)
        state = positions[[names.index(j) for j in self.config.joints]]
        return state if np.all(np.isfinite(state)) else None

    # -- pass 2: observations through the live node's PolicyLoop ------------------------

    def observations(self, on_message: Callable[[int], Any] | None = None) -> Iterator[ReplayedObservation]:
        """Observations in stamp order, formed as the live policy node forms them.

        Each message goes to runtime PolicyLoop.add (camera images converted first, as the
        node's callbacks do) with now_s = its receive time; when a set completes and a chunk
        is due, PolicyLoop.take_observation(now_s) assembles it (age and validity checks
        included). on_message(1) is called per bag message (progress).
        """
        loop = PolicyLoop(self.config, policy=None)
        inputs = sync_inputs(self.config)
        prompt_topics = [] if self.instruction is not None else \
            [t for t, ty in ((INSTRUCTION_TOPIC, STRING), (SUBTASK_TOPIC, SUBTASK)) if self.bag.topics.get(t) == ty]
        if self.instruction is not None:
            loop.set_instruction(self.instruction)
        next_due_s = -math.inf
        for m in self.bag.messages(list(inputs) + prompt_topics):
            if on_message is not None:
                on_message(1)
            if m.topic in prompt_topics:
                loop.set_instruction(m.msg.subtask if m.msgtype == SUBTASK else m.msg.data)
                continue
            now_s = m.receive_time_s - self.clock_offset_s
            name = inputs[m.topic]
            stamp = m.msg.header.stamp
            stamp_s = stamp.sec + stamp.nanosec * 1e-9
            self._stamp_leads.setdefault(m.topic, []).append(stamp_s - m.receive_time_s)
            try:
                payload = self._payload(name, m.msg)
            except ObservationError as exc:  # the node drops such a message with a diagnostic
                self._count(f"{m.topic}: {exc}")
                continue
            result = loop.add(name, stamp_s, payload, now_s)
            if result.status is SyncStatus.REJECTED:
                self.counters.sync_rejected += 1
            elif result.status is SyncStatus.STALE:
                self.counters.sync_stale += 1
            if result.status is not SyncStatus.EMITTED:
                continue
            self.counters.sets_emitted += 1
            if result.synced.newest_stamp_s < next_due_s - 1e-9:
                self.counters.skipped_between_requests += 1
                continue
            try:
                observation = loop.take_observation(now_s)
            except ObservationError as exc:
                self._count(exc)
                continue
            if observation is None:
                continue
            next_due_s = observation.stamp_s + self.every_s
            self.counters.observations_used += 1
            yield ReplayedObservation(observation, available_time_s=now_s)

    def _payload(self, name: str, msg: Any) -> Any:
        """A message as the node's callback hands it to PolicyLoop.add."""
        if name == JOINT_STATES:
            if len(msg.position) != len(msg.name):
                raise ObservationError(f"joint state has {len(msg.name)} names but "
                                       f"{len(msg.position)} positions; ignored")
            return joint_state_payload(list(msg.name), msg.position)
        if name == ODOM:
            twist = msg.twist.twist
            return {"vx": twist.linear.x, "vy": twist.linear.y, "wz": twist.angular.z}
        camera = self.config.camera(name)
        if camera.message_type == "raw":
            return image_from_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, camera=name)
        return image_from_compressed(msg.format, msg.data, camera=name)

    def _count(self, error: Exception | str) -> None:
        self.counters.invalid_observations += 1
        self.counters.reasons[str(error)[:200]] += 1

    def stamp_offsets_s(self) -> dict[str, float]:
        """topic -> how far its header stamps run ahead of the joint states' (s, median over the
        messages replayed so far, each measured against its own receive time)."""
        leads = {topic: float(np.median(values)) for topic, values in self._stamp_leads.items()}
        reference = leads.get(self.config.joint_states_topic)
        if reference is None:
            return {}
        return {topic: lead - reference for topic, lead in leads.items() if topic != self.config.joint_states_topic}

    def stamp_offset_problem(self) -> str:
        """The inputs whose stamps are further from the joint states' than sync.slop_s, so no
        synchronized set can form; "" when there is none."""
        slop_s = self.config.sync.slop_s
        offsets = {t: o for t, o in self.stamp_offsets_s().items() if abs(o) > slop_s}
        if not offsets:
            return ""
        parts = [f"'{t}' stamps are {abs(o):.3f} s {'ahead of' if o > 0 else 'behind'} "
                 f"'{self.config.joint_states_topic}'" for t, o in sorted(offsets.items())]
        return (f"{'; '.join(parts)} (relative to their receive times); sync.slop_s = {slop_s} s, so they are "
                "never synchronized: fix the clock of that sensor's driver")
