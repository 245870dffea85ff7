"""Which input is at fault when the policy is not commanding: per-input health for diagnostics.

One bad input usually makes the others look bad too: while a camera sends undecodable
images, the joint states queue up in the synchronizer and are discarded as stale, so the
synchronizer's last error names the joint states. An operator needs the root cause. This
module keeps, per synchronized input, what is known at the source (ROS-free, float
seconds from the caller's clock):

- when its last message arrived (silent: nothing for `silent_after_s`);
- how old its last message's stamp was on arrival (stale at the source: a clock or
  driver problem on that input, not a consequence of another input);
- whether its last message could be used at all (bad: undecodable image, NaN, wrong
  names), with the message of that error.

`fault(now_s)` ranks these: a bad message first, then a silent input, then a stale one,
and returns one sentence naming the input and its topic, or None when every input is
healthy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class _InputState:
    topic: str
    last_arrival_s: float | None = None
    stamp_age_s: float = 0.0
    bad_message: str = ""


class InputHealth:
    """Per-input arrival, stamp age and last error, for the inputs one node synchronizes."""

    def __init__(self, topics: dict[str, str], max_age_s: float, silent_after_s: float):
        """topics: input name -> topic; max_age_s: stamps older than this on arrival are stale;
        silent_after_s: no message for this long counts as silent."""
        self._inputs = {name: _InputState(topic) for name, topic in topics.items()}
        self.max_age_s = max_age_s
        self.silent_after_s = silent_after_s
        self._started_s: float | None = None
        self._lock = threading.Lock()

    def start(self, now_s: float) -> None:
        """Silence is counted from here for inputs that never sent anything."""
        with self._lock:
            self._started_s = now_s

    def arrived(self, name: str, stamp_s: float, now_s: float) -> None:
        """A message of input `name` arrived (good or bad: arrival is what silence measures)."""
        with self._lock:
            state = self._inputs[name]
            state.last_arrival_s = now_s
            state.stamp_age_s = now_s - stamp_s

    def good(self, name: str) -> None:
        """The input's last message was usable: clears its error."""
        with self._lock:
            self._inputs[name].bad_message = ""

    def bad(self, name: str, message: str, now_s: float) -> None:
        """The input's last message could not be used; message says why."""
        with self._lock:
            state = self._inputs[name]
            state.last_arrival_s = now_s
            state.bad_message = message

    def fault(self, now_s: float) -> str | None:
        """The most likely root cause of no commands, naming the input and its topic; None if healthy."""
        with self._lock:
            items = list(self._inputs.items())
            started_s = self._started_s
        for name, s in items:
            if s.bad_message:
                return f"input '{name}' ({s.topic}): {s.bad_message}"
        for name, s in items:
            since_s = s.last_arrival_s if s.last_arrival_s is not None else started_s
            if since_s is not None and now_s - since_s > self.silent_after_s:
                what = "no message yet" if s.last_arrival_s is None else "no message"
                return (f"input '{name}' ({s.topic}): {what} for {now_s - since_s:.1f} s "
                        f"(silent after {self.silent_after_s:g} s)")
        for name, s in items:
            if s.last_arrival_s is not None and s.stamp_age_s > self.max_age_s:
                return (f"input '{name}' ({s.topic}): stamps are {s.stamp_age_s:.2f} s old on arrival "
                        f"(sync.max_age_s is {self.max_age_s:g} s; check the sender's clock)")
        return None
