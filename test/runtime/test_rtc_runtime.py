"""chunk.mode rtc in the runtime: the delay estimate, the running chunk aligned to the new
observation, no cross-fade, and (closed loop in SimRobot with the demo checkpoint) chunks that
join at injected latency with no step above the rate limit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from config_files import config_file

from ki_vla_ros.runtime.chunking import ChunkScheduler, DelayEstimate, Trajectory
from ki_vla_ros.runtime.config import ConfigError, load_robot_config
from ki_vla_ros.runtime.model_loading import load_predictor
from ki_vla_ros.runtime.policy import Policy
from ki_vla_ros.sim.chunk_execution import run_chunk_execution

torch.set_num_threads(1)


def test_delay_is_the_p90_latency_in_steps_rounded_up_plus_the_margin():
    delay = DelayEstimate(step_duration_s=0.1, margin_steps=1)
    assert delay.steps() == 1  # nothing measured yet: the margin
    for latency_s in [0.1] * 9 + [0.34]:
        delay.add(latency_s)
    # p90 of nine 0.1 s and one 0.34 s = 0.124 s -> 2 steps, + 1
    assert delay.steps() == 3
    delay.add(float("nan"))  # not a measurement
    assert delay.steps() == 3
    exact = DelayEstimate(step_duration_s=0.1, margin_steps=0)
    exact.add(0.3)  # 3 steps exactly, not 4 by rounding
    assert exact.steps() == 3


def test_the_running_trajectory_is_given_at_the_new_chunks_step_times_while_it_lasts():
    config = load_robot_config("single_arm")
    predictor = load_predictor(config, checkpoint="tiny")
    policy = Policy(predictor, config)
    dt = config.chunk.step_duration_s
    actions = np.arange(10.0)[:, None] * np.ones(config.action_dim)  # value k at 10 + k * dt
    running = Trajectory(10.0, dt, config.action_names, actions)
    aligned = policy.running_actions(stamp_s=10.25, running=running)
    # new step k is due at 10.25 + (k + 1) * 0.1 = 10.35, 10.45, ... <= 10.9: 6 steps, half way between
    np.testing.assert_allclose(aligned[:, 0], np.arange(6) + 3.5, atol=1e-6)
    assert policy.running_actions(stamp_s=10.9, running=running) is None  # it has ended


def test_rtc_mode_does_not_cross_fade():
    config = load_robot_config("single_arm")
    from ki_vla_ros.runtime.action_chunk import ActionChunk

    names, dt = config.action_names, config.chunk.step_duration_s
    scheduler = ChunkScheduler(dataclasses.replace(config.chunk, mode="rtc"))
    scheduler.commit(Trajectory(0.0, dt, names, np.zeros((10, len(names)))), stamp_s=-dt)
    new = ActionChunk(0.4, 0.5, dt, names, np.ones((10, len(names)), np.float32), 0.0, "t")
    plan = scheduler.plan(new, now_s=0.5)
    assert plan.blended_steps == 0 and np.all(plan.trajectory.actions == 1.0)


def test_chunk_mode_is_blend_by_default_and_a_wrong_mode_is_named(tmp_path):
    assert load_robot_config("single_arm").chunk.mode == "blend"
    def chunk(**values):
        return lambda document: document["policy_node"]["ros__parameters"]["chunk"].update(values)

    with pytest.raises(ConfigError, match=r"chunk\.mode = 'inpaint': one of \['blend', 'rtc'\]"):
        load_robot_config(config_file(tmp_path, "single_arm", chunk(mode="inpaint")))
    config = load_robot_config(config_file(tmp_path, "single_arm", chunk(mode="rtc", rtc_margin_steps=2)))
    assert config.chunk.mode == "rtc" and config.chunk.rtc_margin_steps == 2


def test_rtc_joins_chunks_at_300_ms_latency_with_no_step_above_the_rate_limit_where_plain_chunks_jump():
    """Six held-out scenes, the same chunks joined with and without RTC. (It was one scene, seed 3,
    chosen with an earlier demo checkpoint; the retrained one happens to join that scene smoothly
    without RTC too, so the test now asks for the property over scenes.)"""
    config = load_robot_config("single_arm")
    predictor = load_predictor(config, checkpoint="demo", device="cpu")
    rtc, none = [], []
    for seed in range(6):
        rtc.append(run_chunk_execution(config, predictor, seed=seed, mode="rtc", latency_s=0.3))
        none.append(run_chunk_execution(config, predictor, seed=seed, mode="none", latency_s=0.3))
        assert rtc[-1].chunks == none[-1].chunks >= 5
    # Seam gap: the first new command against the running one, in per-step rate limits.
    rtc_gaps, plain_gaps = [r.max_seam_gap for r in rtc], [r.max_seam_gap for r in none]
    assert max(rtc_gaps) <= 1.0, rtc_gaps
    assert sum(g > 1.0 for g in plain_gaps) >= 2, plain_gaps  # the same chunks without RTC jump
    assert np.mean(rtc_gaps) < 0.5 * np.mean(plain_gaps), (rtc_gaps, plain_gaps)
