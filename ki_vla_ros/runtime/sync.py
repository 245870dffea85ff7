"""Approximate-time synchronization of observation inputs by header stamp.

The semantics of ROS message_filters' ApproximateTimeSynchronizer (which cannot be
installed here), written from its documented behaviour:

- every input keeps its `queue_size` newest messages; an older one falls out;
- a set holds one message per input, all stamps within `slop_s` of each other;
- a set is emitted once every input has a message and a set within slop exists; of all
  candidate sets the best match (smallest stamp spread; on a tie the newer set) wins;
- once a set is emitted, its messages and every older message are dropped, so sets come
  out in stamp order and no message is used twice;
- stamps on one input must increase: an out-of-order (or repeated) stamp is rejected
  with a reason, as message_filters drops it with an error.

Two deliberate differences, both for a controller that acts on what it sees:

- A set is emitted as soon as one within slop exists. message_filters' C++ policy may
  hold a set back until later messages prove no better set can form; that wait is
  latency on every command, and the slop already bounds the mismatch.
- `max_age_s`: a message older than `now_s - max_age_s` is discarded (counted as stale),
  so a set whose oldest stamp is older than that is never emitted. A frozen camera can
  therefore never pair an old image with fresh joint states.

ROS-free: stamps and `now_s` are float seconds converted by the caller, the payload is
opaque. Callbacks may come from several executor threads, so every call takes a lock.
"""

from __future__ import annotations

import bisect
import enum
import math
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ki_vla_ros.runtime.config import SyncConfig


class SyncStatus(enum.Enum):
    EMITTED = "emitted"  # a synchronized set is in the result
    WAITING = "waiting"  # some input has no message yet (or none newer than the last set)
    NO_MATCH = "no_match"  # every input has messages, but no set lies within slop
    STALE = "stale"  # messages older than max_age_s were discarded on this call
    REJECTED = "rejected"  # this message was refused (out of order, bad stamp)


@dataclass(frozen=True)
class SyncedSet:
    """One message per input whose stamps lie within slop of each other."""

    stamps_s: Mapping[str, float]
    payloads: Mapping[str, Any]

    @property
    def oldest_stamp_s(self) -> float:
        return min(self.stamps_s.values())

    @property
    def newest_stamp_s(self) -> float:
        return max(self.stamps_s.values())

    @property
    def spread_s(self) -> float:
        return self.newest_stamp_s - self.oldest_stamp_s


@dataclass(frozen=True)
class SyncResult:
    status: SyncStatus
    synced: SyncedSet | None = None
    reason: str = ""


@dataclass(frozen=True)
class SyncCounters:
    emitted: int = 0
    rejected_out_of_order: int = 0
    dropped_stale: int = 0
    dropped_queue_full: int = 0
    dropped_unmatched: int = 0  # older than an emitted set, never part of one


class ApproximateTimeSync:
    """Groups messages from named inputs into sets with nearly equal stamps."""

    def __init__(self, inputs: Sequence[str], queue_size: int, slop_s: float, max_age_s: float):
        if len(inputs) < 1 or len(set(inputs)) != len(inputs):
            raise ValueError(f"sync inputs must be distinct names, got {list(inputs)}")
        if queue_size < 1:
            raise ValueError(f"queue_size is {queue_size}; expected at least 1")
        if slop_s < 0 or max_age_s <= 0:
            raise ValueError(f"slop_s={slop_s}, max_age_s={max_age_s}; expected slop >= 0, age > 0")
        self.inputs = tuple(inputs)
        self.queue_size = queue_size
        self.slop_s = slop_s
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._stamps: dict[str, list[float]] = {n: [] for n in self.inputs}
        self._payloads: dict[str, list[Any]] = {n: [] for n in self.inputs}
        self._last_stamp: dict[str, float] = {}
        self._counts = {f: 0 for f in SyncCounters.__dataclass_fields__}

    @classmethod
    def from_config(cls, sync_config: SyncConfig, inputs: Sequence[str]) -> "ApproximateTimeSync":
        """Inputs are named by the caller, e.g. the camera names and 'joint_states'."""
        return cls(inputs, sync_config.queue_size, sync_config.slop_s, sync_config.max_age_s)

    def add(self, input_name: str, stamp_s: float, payload: Any, now_s: float) -> SyncResult:
        """Offer one message; returns whether a set came out, and if not, why not."""
        if input_name not in self._stamps:
            raise ValueError(f"unknown sync input {input_name!r}; inputs are {list(self.inputs)}")
        with self._lock:
            if not math.isfinite(stamp_s):
                return SyncResult(SyncStatus.REJECTED, reason=f"input '{input_name}' stamp is {stamp_s}")
            last = self._last_stamp.get(input_name)
            if last is not None and stamp_s <= last:
                self._counts["rejected_out_of_order"] += 1
                return SyncResult(SyncStatus.REJECTED, reason=(
                    f"input '{input_name}' stamp {stamp_s:.6f} s is not newer than its previous "
                    f"stamp {last:.6f} s (out of order); message dropped"))
            self._last_stamp[input_name] = stamp_s
            cutoff_s = now_s - self.max_age_s
            if stamp_s < cutoff_s:
                self._counts["dropped_stale"] += 1
                stale = self._discard_older_than(cutoff_s)
                return SyncResult(SyncStatus.STALE, reason=(
                    f"input '{input_name}' stamp {stamp_s:.6f} s is {now_s - stamp_s:.3f} s old; "
                    f"max_age_s is {self.max_age_s}" + (f"; {stale} more stale discarded" if stale else "")))
            self._append(input_name, stamp_s, payload)
            stale = self._discard_older_than(cutoff_s)
            result = self._match()
            if result.status is not SyncStatus.EMITTED and stale:
                return SyncResult(SyncStatus.STALE, reason=(
                    f"{stale} message(s) older than max_age_s ({self.max_age_s} s) discarded; "
                    + result.reason))
            return result

    def discard_stale(self, now_s: float) -> int:
        """Drop messages older than now_s - max_age_s (for a timer); returns how many."""
        with self._lock:
            return self._discard_older_than(now_s - self.max_age_s)

    def counters(self) -> SyncCounters:
        with self._lock:
            return SyncCounters(**self._counts)

    def queued(self) -> dict[str, int]:
        """Messages waiting per input (diagnostics)."""
        with self._lock:
            return {n: len(s) for n, s in self._stamps.items()}

    def reset(self) -> None:
        """Forget all messages and stamp history (e.g. after a bag loop or sim-time jump)."""
        with self._lock:
            for name in self.inputs:
                self._stamps[name].clear()
                self._payloads[name].clear()
            self._last_stamp.clear()

    # -- internals, called with the lock held ------------------------------------------

    def _append(self, name: str, stamp_s: float, payload: Any) -> None:
        self._stamps[name].append(stamp_s)
        self._payloads[name].append(payload)
        if len(self._stamps[name]) > self.queue_size:
            del self._stamps[name][0]
            del self._payloads[name][0]
            self._counts["dropped_queue_full"] += 1

    def _discard_older_than(self, cutoff_s: float) -> int:
        dropped = 0
        for name in self.inputs:
            n = bisect.bisect_left(self._stamps[name], cutoff_s)
            if n:
                del self._stamps[name][:n]
                del self._payloads[name][:n]
                dropped += n
        self._counts["dropped_stale"] += dropped
        return dropped

    def _match(self) -> SyncResult:
        empty = [n for n in self.inputs if not self._stamps[n]]
        if empty:
            return SyncResult(SyncStatus.WAITING, reason=f"waiting for input(s) {empty}")
        best = self._best_set()
        if best is None or best[0] > self.slop_s:
            spread = "" if best is None else f" (best spread {best[0]:.4f} s)"
            return SyncResult(SyncStatus.NO_MATCH, reason=(
                f"no set of {list(self.inputs)} within slop {self.slop_s} s{spread}"))
        _, picks = best
        stamps = {n: self._stamps[n][i] for n, i in picks.items()}
        payloads = {n: self._payloads[n][i] for n, i in picks.items()}
        for name, i in picks.items():  # the used message and everything older on each input
            self._counts["dropped_unmatched"] += i
            del self._stamps[name][: i + 1]
            del self._payloads[name][: i + 1]
        self._counts["emitted"] += 1
        return SyncResult(SyncStatus.EMITTED, SyncedSet(stamps, payloads))

    def _best_set(self) -> tuple[float, dict[str, int]] | None:
        """Smallest-spread set: for each queued stamp as the set's earliest, take on every
        input its first stamp at or after it. O(N^2 Q log Q) for N inputs, Q queued."""
        best: tuple[float, float, dict[str, int]] | None = None  # (spread, -earliest, picks)
        earliest_candidates = sorted({s for stamps in self._stamps.values() for s in stamps})
        for earliest in earliest_candidates:
            picks: dict[str, int] = {}
            for name in self.inputs:
                i = bisect.bisect_left(self._stamps[name], earliest)
                if i == len(self._stamps[name]):
                    break  # this input has nothing this new; later candidates fare no better
                picks[name] = i
            else:
                spread = max(self._stamps[n][i] for n, i in picks.items()) - earliest
                key = (spread, -earliest)
                if best is None or key < best[:2]:
                    best = (spread, -earliest, picks)
                continue
            break
        return None if best is None else (best[0], best[2])
