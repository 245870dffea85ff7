"""Planner hysteresis: a subtask is published once it repeats; flicker never reaches the policy."""

from __future__ import annotations

import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.subtask_filter import SubtaskFilter, SubtaskOutcome, normalize_subtask


def offer_all(subtasks: SubtaskFilter, candidates):
    return [subtasks.offer(c) for c in candidates]


def test_first_subtask_is_published_immediately_with_sequence_one():
    subtasks = SubtaskFilter(hysteresis_count=3)
    decision = subtasks.offer("pick up the red block")
    assert decision.published and decision.subtask == "pick up the red block"
    assert decision.sequence == 1


def test_a_new_subtask_is_published_after_hysteresis_count_consecutive_decodes():
    subtasks = SubtaskFilter(hysteresis_count=2)
    first, b1, b2, b3 = offer_all(subtasks, ["grasp the cup", "lift the cup", "lift the cup",
                                             "lift the cup"])
    assert first.sequence == 1
    assert b1.outcome is SubtaskOutcome.PENDING and b1.subtask == "grasp the cup"
    assert "1 of 2" in b1.reason
    assert b2.published and b2.subtask == "lift the cup" and b2.sequence == 2
    assert b3.outcome is SubtaskOutcome.UNCHANGED and b3.sequence == 2


def test_subtask_flicker_a_b_a_b_never_publishes_b_with_hysteresis_2():
    subtasks = SubtaskFilter(hysteresis_count=2)
    decisions = offer_all(subtasks, ["open the drawer", "close the drawer"] * 5)
    assert [d.subtask for d in decisions] == ["open the drawer"] * 10
    assert sum(d.published for d in decisions) == 1
    assert subtasks.sequence == 1


def test_alternating_new_candidates_reset_each_other_streak():
    subtasks = SubtaskFilter(hysteresis_count=2)
    decisions = offer_all(subtasks, ["a task", "b task", "c task", "b task", "b task"])
    assert [d.outcome for d in decisions] == [SubtaskOutcome.PUBLISHED, SubtaskOutcome.PENDING,
                                              SubtaskOutcome.PENDING, SubtaskOutcome.PENDING,
                                              SubtaskOutcome.PUBLISHED]
    assert subtasks.subtask == "b task" and subtasks.sequence == 2


def test_candidates_compare_normalized_case_and_whitespace():
    assert normalize_subtask("  Pick up\tthe   Cup \n") == "pick up the cup"
    subtasks = SubtaskFilter(hysteresis_count=2)
    subtasks.offer("pick up the cup")
    decision = subtasks.offer("  Pick UP  the cup ")
    assert decision.outcome is SubtaskOutcome.UNCHANGED and subtasks.sequence == 1
    offer_all(subtasks, ["Place it  in the bin", "place it in the BIN"])
    assert subtasks.sequence == 2
    assert subtasks.subtask == "place it in the BIN"  # case kept from the deciding decode


@pytest.mark.parametrize("garbage, reason", [
    ("", "is empty"),
    ("   \n\t ", "is empty"),
    ("... !? --", "has no letter or digit"),
    ("pick " * 20, "is 99 characters long; expected at most max_chars = 40"),
])
def test_garbage_candidates_are_ignored_with_a_reason(garbage, reason):
    subtasks = SubtaskFilter(hysteresis_count=1, max_chars=40)
    decision = subtasks.offer(garbage)
    assert decision.outcome is SubtaskOutcome.IGNORED and reason in decision.reason
    assert decision.sequence == 0 and decision.subtask == ""


def test_garbage_between_two_decodes_neither_counts_nor_breaks_the_streak():
    subtasks = SubtaskFilter(hysteresis_count=2)
    decisions = offer_all(subtasks, ["wipe the table", "stack the cups", "", "stack the cups"])
    assert decisions[2].outcome is SubtaskOutcome.IGNORED
    assert decisions[3].published and decisions[3].sequence == 2


def test_hysteresis_1_follows_every_change():
    subtasks = SubtaskFilter(hysteresis_count=1)
    decisions = offer_all(subtasks, ["a1", "b2", "a1"])
    assert [d.sequence for d in decisions] == [1, 2, 3]


def test_built_from_the_planner_config():
    config = load_robot_config("mobile").planner
    subtasks = SubtaskFilter.from_config(config)
    assert subtasks.hysteresis_count == config.hysteresis_count
    assert subtasks.max_chars == config.max_subtask_chars == 200


def test_hysteresis_count_below_one_is_rejected():
    with pytest.raises(ValueError, match="hysteresis_count is 0"):
        SubtaskFilter(hysteresis_count=0)
