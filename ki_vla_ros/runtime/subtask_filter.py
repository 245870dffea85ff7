"""Planner hysteresis: a decoded subtask must repeat before the policy's prompt changes.

The planner decodes a subtask from every new observation at a low rate. Decoding is
noisy near the boundary between two subtasks ("grasp the cup" / "lift the cup"), and a
prompt that flips back and forth makes the policy flip too. So:

- Candidates are compared in normalized form: stripped, lowercased, runs of whitespace
  collapsed to one space. "Pick up  the Cup " and "pick up the cup" are the same subtask.
- The first valid candidate is published at once (sequence 1): with nothing published
  the policy has no subtask at all, and waiting would only delay the start.
- After that, a different candidate is published only once it has been decoded
  `hysteresis_count` times in a row; the sequence number then increments. A candidate
  equal to the published subtask resets the streak, so A, B, A, B with hysteresis 2
  never publishes B.
- Garbage is ignored with a reason and has no effect on the streak (it is as if that
  decode had not happened): empty text, text without a single letter or digit ("...",
  "<eos>" would pass, so the node strips special tokens first), and text longer than
  `max_chars` (a decode that ran away until max_new_tokens).

The published text is the candidate with its whitespace collapsed, case kept (the text
of the decode that completed the streak); only the comparison is case-insensitive.
Thread-safe; the planner node may call it from its timer and read it from a service.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

from ki_vla_ros.runtime.config import PlannerConfig


class SubtaskOutcome(enum.Enum):
    PUBLISHED = "published"  # text changed: publish it with the new sequence number
    UNCHANGED = "unchanged"  # same as the published subtask
    PENDING = "pending"  # a different subtask, not yet repeated hysteresis_count times
    IGNORED = "ignored"  # garbage; see reason


@dataclass(frozen=True)
class SubtaskDecision:
    outcome: SubtaskOutcome
    subtask: str  # the subtask in force after this candidate ("" before the first)
    sequence: int  # 0 before the first publication, then +1 per change
    reason: str = ""

    @property
    def published(self) -> bool:
        return self.outcome is SubtaskOutcome.PUBLISHED


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def normalize_subtask(text: str) -> str:
    """The comparison key: stripped, lowercased, whitespace runs collapsed to one space."""
    return collapse_whitespace(text).lower()


class SubtaskFilter:
    """Publishes a subtask only after it has been decoded hysteresis_count times in a row."""

    def __init__(self, hysteresis_count: int, max_chars: int = 200):
        if hysteresis_count < 1:
            raise ValueError(f"hysteresis_count is {hysteresis_count}; expected at least 1")
        if max_chars < 1:
            raise ValueError(f"max_chars is {max_chars}; expected at least 1")
        self.hysteresis_count = hysteresis_count
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._published = ""
        self._published_key = ""
        self._sequence = 0
        self._pending_key = ""
        self._pending_count = 0

    @classmethod
    def from_config(cls, config: PlannerConfig) -> "SubtaskFilter":
        return cls(config.hysteresis_count, config.max_subtask_chars)

    @property
    def subtask(self) -> str:
        with self._lock:
            return self._published

    @property
    def sequence(self) -> int:
        with self._lock:
            return self._sequence

    def offer(self, candidate: str) -> SubtaskDecision:
        """One decoded candidate -> whether the published subtask changes."""
        text = collapse_whitespace(candidate)
        with self._lock:
            problem = self._garbage(text)
            if problem:
                return self._decision(SubtaskOutcome.IGNORED, f"candidate {_quote(candidate)} {problem}")
            key = text.lower()
            if self._sequence == 0:
                return self._publish(text, key, "first subtask, published at once")
            if key == self._published_key:
                self._pending_key, self._pending_count = "", 0
                return self._decision(SubtaskOutcome.UNCHANGED)
            if key == self._pending_key:
                self._pending_count += 1
            else:
                self._pending_key, self._pending_count = key, 1
            if self._pending_count >= self.hysteresis_count:
                return self._publish(text, key, f"decoded {self._pending_count} times in a row")
            return self._decision(SubtaskOutcome.PENDING,
                                  f"'{text}' decoded {self._pending_count} of "
                                  f"{self.hysteresis_count} times in a row")

    def _garbage(self, text: str) -> str:
        if not text:
            return "is empty"
        if not any(ch.isalnum() for ch in text):
            return "has no letter or digit"
        if len(text) > self.max_chars:
            return f"is {len(text)} characters long; expected at most max_chars = {self.max_chars}"
        return ""

    def _publish(self, text: str, key: str, reason: str) -> SubtaskDecision:
        self._published, self._published_key = text, key
        self._sequence += 1
        self._pending_key, self._pending_count = "", 0
        return self._decision(SubtaskOutcome.PUBLISHED, reason)

    def _decision(self, outcome: SubtaskOutcome, reason: str = "") -> SubtaskDecision:
        return SubtaskDecision(outcome, self._published, self._sequence, reason)


def _quote(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")
