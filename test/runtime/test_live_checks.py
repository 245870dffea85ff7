"""The checks the live nodes run on arrival or at start-up (ROS-free): which input is at fault,
whether an instruction is usable, whether the chunk timing can meet the mux's timeout."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from ki_vla_ros.runtime.chunking import chunk_period_warning
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.input_health import InputHealth
from ki_vla_ros.runtime.instruction import InstructionError, check_instruction, shorten

TOPICS = {"base": "/cameras/base/image_raw", "wrist": "/cameras/wrist/image_raw", "joint_states": "/joint_states"}


def healthy_at(now_s: float) -> InputHealth:
    health = InputHealth(TOPICS, max_age_s=0.3, silent_after_s=1.0)
    health.start(0.0)
    for name in TOPICS:
        health.arrived(name, now_s - 0.02, now_s)
        health.good(name)
    return health


def test_healthy_inputs_have_no_fault():
    assert healthy_at(10.0).fault(10.5) is None


def test_a_bad_image_is_the_fault_even_when_other_inputs_look_stale_because_of_it():
    health = healthy_at(10.0)
    health.arrived("joint_states", 9.0, 10.1)  # queued behind the bad camera: looks old
    health.bad("base", "camera 'base' image is 64x48 16UC1; expected an RGB/BGR/mono encoding", 10.1)
    fault = health.fault(10.2)
    assert fault.startswith("input 'base' (/cameras/base/image_raw): camera 'base' image") and "16UC1" in fault


def test_a_silent_input_is_named_with_how_long_it_has_been_silent():
    health = healthy_at(10.0)
    for t in (10.5, 11.0, 11.5):
        health.arrived("base", t, t)
        health.arrived("joint_states", t, t)
    assert health.fault(11.6) == ("input 'wrist' (/cameras/wrist/image_raw): no message for 1.6 s "
                                  "(silent after 1 s)")


def test_an_input_that_never_sent_anything_is_silent_from_the_start():
    health = InputHealth(TOPICS, max_age_s=0.3, silent_after_s=1.0)
    health.start(0.0)
    assert health.fault(0.5) is None
    assert "input 'base' (/cameras/base/image_raw): no message yet for 2.0 s" in health.fault(2.0)


def test_stamps_old_on_arrival_are_named_as_that_inputs_problem():
    health = healthy_at(10.0)
    health.arrived("joint_states", 5.0, 10.0)
    assert health.fault(10.1).startswith("input 'joint_states' (/joint_states): stamps are 5.00 s old on arrival")


class _Budget:
    """A predictor-shaped object with a prompt budget: one token per word plus 20 for the state."""

    def prompt_tokens(self, task):
        return len(task.split()) + 20, 48


@pytest.mark.parametrize("text, expected", [
    ("", "is empty"), (" \n ", "is empty"),
    ("a" * 2001, "has 2001 characters; expected at most 2000"),
    ("word " * 29, "needs 49 prompt tokens with the state; the model's budget (max_token_len) is 48"),
])
def test_unusable_instructions_are_rejected_naming_the_problem(text, expected):
    with pytest.raises(InstructionError, match=re.escape(expected)):
        check_instruction(text, _Budget())


def test_a_usable_instruction_is_returned_stripped():
    assert check_instruction("  move to the red block\n", _Budget()) == "move to the red block"
    assert check_instruction("word " * 28, _Budget()) == ("word " * 28).strip()


def test_long_texts_are_shortened_for_logs_with_their_length():
    assert shorten("x" * 100_000, 10) == "xxxxxxxxxx... (100000 characters)"
    assert shorten("short") == "short"


def test_the_real_predictor_counts_the_prompt_with_the_widest_state():
    from ki_vla_ros.runtime.model_loading import load_predictor

    config = load_robot_config("single_arm")
    predictor = load_predictor(config, "tiny")
    tokens, budget = predictor.prompt_tokens("move to the red block")
    assert budget == predictor.config.max_token_len and 8 < tokens < budget
    with pytest.raises(InstructionError, match="prompt tokens"):
        check_instruction("pick " * 300, predictor)


def test_chunk_timing_that_cannot_meet_the_mux_timeout_is_warned_about():
    config = load_robot_config("single_arm")  # 5 steps x 0.1 s, policy_timeout_s 1.0
    assert chunk_period_warning(config) is None
    assert chunk_period_warning(config, inference_s=0.4) is None
    warning = chunk_period_warning(config, inference_s=0.6)
    assert "1.100 s apart" in warning and "policy_timeout_s = 1.0 s" in warning
    slow = replace(config, chunk=replace(config.chunk, execute_steps=12))
    assert "1.200 s apart" in chunk_period_warning(slow)
