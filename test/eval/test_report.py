"""Evaluation reports people can read: the headline error leaves out joints that never moved,
times count from the bag's start, axes have units, held joints are not drawn as noise."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from episode_bags import arm_config, commanded_actions, write_episode_bag
from ki_vla_ros.eval.metrics import action_units
from ki_vla_ros.eval.report import STILL_AXIS_FRACTION, still_axis_limits
from ki_vla_ros.eval.run import TrajectoryOraclePolicy, evaluate_bags

CONFIG = arm_config()  # shoulder, elbow, wrist (rad), finger (0..0.04 m)
H = CONFIG.chunk.horizon_steps
RANGES = np.array([4.0, 2.5, 6.0, 0.04])


def test_the_headline_error_averages_the_moving_joints_and_names_the_still_ones(tmp_path):
    episode = write_episode_bag(tmp_path / "episode", start_s=1000.0, still_joints=("finger",))
    offset = 0.01 * np.arange(H)[:, None] * np.array([1.0, 2.0, -1.0, 0.1])[None, :]
    policy = TrajectoryOraclePolicy(CONFIG, lambda t: commanded_actions(CONFIG, t, ("finger",)), offset=offset)
    report = evaluate_bags([episode.path], CONFIG, policy, tmp_path / "report", progress=False)

    assert [report["per_dim"][n]["moved"] for n in CONFIG.action_names] == [True, True, True, False]
    moving = report["overall_moving"]
    assert moving["dims"] == ["shoulder", "elbow", "wrist"] and moving["still_dims"] == ["finger"]
    per_dim = [report["per_dim"][n]["mae_normalized"] for n in ("shoulder", "elbow", "wrist")]
    assert moving["mae_normalized"] == pytest.approx(np.mean(per_dim), rel=1e-9)  # equal counts per dim
    # the still gripper's error (0.001 * k on a 0.04 m range) would dominate an all-dims mean
    assert report["overall"]["mae_normalized"] > 2 * moving["mae_normalized"]

    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "Over the 3 dims that moved (shoulder, elbow, wrist): MAE / range" in summary
    assert "Never moved (recorded targets span < 1 % of the range), left out of that mean: finger" in summary
    assert "| finger | no |" in summary and "| shoulder | yes |" in summary
    # windows are placed in the bag (it starts at 1000 s), not in epoch seconds
    starts = [w["since_bag_start_s"] for w in report["worst_windows"] + report["best_windows"]]
    assert all(0.0 <= s <= 2.0 for s in starts), starts
    for name in ("error_vs_horizon.png", "window_worst.png", "window_best.png"):
        image = cv2.imread(str(tmp_path / "report" / name))
        assert image is not None and image.shape[0] > 200, name


def test_axis_units_are_radians_for_joints_and_metres_for_a_small_gripper():
    assert action_units(CONFIG) == ["rad", "rad", "rad", "m"]


def test_a_held_joint_is_drawn_over_a_tenth_of_its_range_not_its_noise():
    held = np.array([0.02, 0.02 + 1e-7, 0.02 - 1e-7, np.nan])
    low, high = still_axis_limits(held, 0.04)
    assert high - low == pytest.approx(STILL_AXIS_FRACTION * 0.04) and low < 0.02 < high
    assert still_axis_limits(np.array([0.0, 0.01]), 0.04) is None  # a quarter of the range: autoscale
