"""The latest measured value of every joint, merged from several JointState streams.

An arm and its gripper often publish sensor_msgs/JointState separately on /joint_states
(two joint_state_broadcasters, or a driver per device), each message naming only its own
joints. Acting on one message would always miss the other device's joints, so this cache
keeps, per joint name, the newest (position, velocity, stamp) it has seen, and
`snapshot(joints, now_s, max_age_s)` reads them back in the configured order.

A snapshot is only as fresh as its oldest joint: its stamp is the oldest joint's stamp,
and any joint older than `max_age_s` (a gripper driver that died while the arm keeps
publishing) makes the whole snapshot an `ObservationError` naming that joint and its age.
So is a missing joint (naming the joints that were seen, which usually shows a typo or a
namespace) and a non-finite position. Non-finite positions are stored, not dropped:
dropping them would leave an older good value in place that looks valid until it ages out.

Per joint, stamps must not go backwards: an older stamp than the one stored (a reordered
or replayed message) is ignored and counted, so a late message never overwrites newer
data. An equal stamp replaces the stored value.

ROS-free: stamps are float seconds converted by the caller. Callbacks may come from
several executor threads, so every call takes a lock.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ki_vla_ros.runtime.observation import ObservationError


@dataclass(frozen=True)
class JointSample:
    position: float
    velocity: float | None  # None: the message carried no velocities
    stamp_s: float


@dataclass(frozen=True)
class JointStateSnapshot:
    """Measured joint state in a requested joint order.

    positions: float64 [J], all finite.
    velocities: float64 [J], or None when any joint has no finite velocity.
    stamp_s: the oldest stamp among the joints (how fresh the snapshot is as a whole).
    """

    joint_names: tuple[str, ...]
    positions: np.ndarray
    velocities: np.ndarray | None
    stamp_s: float

    def age_s(self, now_s: float) -> float:
        return now_s - self.stamp_s


@dataclass(frozen=True)
class JointStateCounters:
    messages: int = 0
    joint_updates: int = 0
    ignored_out_of_order: int = 0  # per joint: a stamp older than the stored one


class JointStateCache:
    """Newest position, velocity and stamp per joint name, from any number of JointState streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, JointSample] = {}
        self._messages = 0
        self._joint_updates = 0
        self._out_of_order = 0

    def update(self, names: Sequence[str], positions: Sequence[float], stamp_s: float,
               velocities: Sequence[float] = ()) -> int:
        """Merge one JointState message; returns how many joints it updated.

        velocities may be empty (JointState allows it); otherwise one per name. A
        malformed message (length mismatch, a name twice, a non-finite stamp) raises
        ObservationError and changes nothing.
        """
        if len(names) != len(positions):
            raise ObservationError(f"joint state has {len(names)} names but {len(positions)} "
                                   "positions; expected one position per name")
        if len(velocities) not in (0, len(names)):
            raise ObservationError(f"joint state has {len(names)} names but {len(velocities)} "
                                   "velocities; expected none or one per name")
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if list(names).count(n) > 1})
            raise ObservationError(f"joint state lists joint(s) {twice} more than once; "
                                   "expected each once")
        stamp_s = float(stamp_s)
        if not math.isfinite(stamp_s):
            raise ObservationError(f"joint state stamp is {stamp_s}; expected a finite time")
        updated = 0
        with self._lock:
            self._messages += 1
            for i, name in enumerate(names):
                stored = self._samples.get(name)
                if stored is not None and stamp_s < stored.stamp_s:
                    self._out_of_order += 1
                    continue
                velocity = float(velocities[i]) if velocities else None
                self._samples[name] = JointSample(float(positions[i]), velocity, stamp_s)
                updated += 1
            self._joint_updates += updated
        return updated

    def snapshot(self, joints: Sequence[str], now_s: float, max_age_s: float) -> JointStateSnapshot:
        """The state of `joints`, in that order, or ObservationError saying which joint is
        missing, older than max_age_s, or not finite."""
        with self._lock:
            samples = {j: self._samples.get(j) for j in joints}
            seen = sorted(self._samples)
        missing = [j for j, s in samples.items() if s is None]
        if missing:
            raise ObservationError(f"no joint state received for joint(s) {missing}; "
                                   f"joints seen so far: {seen}")
        stale = [(j, now_s - s.stamp_s) for j, s in samples.items() if now_s - s.stamp_s > max_age_s]
        if stale:
            described = ", ".join(f"'{j}' is {age:.3f} s old" for j, age in stale)
            raise ObservationError(f"joint state too old: {described}; expected at most "
                                   f"max_age_s = {max_age_s} s")
        for joint, sample in samples.items():
            if not math.isfinite(sample.position):
                raise ObservationError(f"joint '{joint}' position is {sample.position}; "
                                       "expected a finite number")
        positions = np.array([samples[j].position for j in joints], dtype=np.float64)
        raw_velocities = [samples[j].velocity for j in joints]
        velocities = None
        if all(v is not None and math.isfinite(v) for v in raw_velocities):
            velocities = np.array(raw_velocities, dtype=np.float64)
        stamp = min(s.stamp_s for s in samples.values()) if samples else float(now_s)
        return JointStateSnapshot(tuple(joints), positions, velocities, stamp)

    def latest(self, joint: str) -> JointSample | None:
        with self._lock:
            return self._samples.get(joint)

    @property
    def joint_names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._samples))

    @property
    def counters(self) -> JointStateCounters:
        with self._lock:
            return JointStateCounters(self._messages, self._joint_updates, self._out_of_order)
