"""Open-loop evaluation on simulated episodes: exact oracles, known offsets, latency, bad bags."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from episode_bags import CONFIG_PATH, arm_config, commanded_actions, write_episode_bag
from ki_vla_ros.eval.bag_io import BagError
from ki_vla_ros.eval.episodes import EpisodeReplay
from ki_vla_ros.eval.run import TrajectoryOraclePolicy, evaluate_bags

CONFIG = arm_config()
H = CONFIG.chunk.horizon_steps  # 10 steps of 0.1 s
RANGES = np.array([4.0, 2.5, 6.0, 0.04])  # upper - lower of shoulder, elbow, wrist, finger


def commands_oracle(**kwargs):
    return TrajectoryOraclePolicy(CONFIG, lambda times: commanded_actions(CONFIG, times), **kwargs)


def evaluate(bags, policy, out_dir, **kwargs):
    return evaluate_bags(bags, CONFIG, policy, out_dir, progress=False, plots=False, **kwargs)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_oracle_of_the_recorded_commands_has_zero_error(tmp_path, storage):
    episode = write_episode_bag(tmp_path / "episode", storage=storage)
    report = evaluate([episode.path], commands_oracle(), tmp_path / "report")
    assert report["totals"]["bags_ok"] == 1
    assert report["totals"]["windows"] == 5  # 2 s episode, a chunk every execute_steps * dt = 0.5 s
    assert report["overall"]["compared"] == 5 * H * 4  # every step of every chunk has a target
    assert report["overall"]["mae_normalized"] < 1e-9
    assert all(s["rmse"] < 1e-9 for s in report["per_dim"].values())
    assert report["bags"][0]["targets"] == {"arm": "commands on /arm_controller/joint_trajectory",
                                            "gripper": "commands on /gripper_controller/joint_trajectory"}


def test_without_commands_the_measured_joint_states_are_the_target(tmp_path):
    episode = write_episode_bag(tmp_path / "episode", storage="sqlite3", commands=False)
    report = evaluate([episode.path], TrajectoryOraclePolicy(CONFIG, episode.measured_actions),
                      tmp_path / "report")
    assert report["bags"][0]["targets"]["arm"] == "measured joint states on /joint_states"
    assert report["overall"]["mae_normalized"] < 1e-9
    # the commands oracle is now wrong by how far the simulated joints lag the commands
    lagging = evaluate([episode.path], commands_oracle(), tmp_path / "report2")
    assert lagging["overall"]["mae_normalized"] > 1e-3


def test_an_offset_policy_gives_the_hand_computed_errors(tmp_path):
    episode = write_episode_bag(tmp_path / "episode")
    scale = np.array([1.0, 2.0, -1.0, 0.1])  # error of dim d at step k: 0.01 * k * scale[d]
    offset = 0.01 * np.arange(H)[:, None] * scale[None, :]
    report = evaluate([episode.path], commands_oracle(offset=offset), tmp_path / "report")
    k = np.arange(H)
    for d, name in enumerate(CONFIG.action_names):
        stats = report["per_dim"][name]
        assert stats["mae"] == pytest.approx(0.01 * abs(scale[d]) * k.mean(), rel=1e-6)  # 0.045 |s|
        assert stats["rmse"] == pytest.approx(0.01 * abs(scale[d]) * np.sqrt((k**2).mean()), rel=1e-6)
        assert stats["mae_normalized"] == pytest.approx(stats["mae"] / RANGES[d], rel=1e-6)
    by_step = report["by_horizon_step"]["mae_normalized"]
    assert by_step == pytest.approx(list(0.01 * k * np.mean(np.abs(scale) / RANGES)), abs=1e-9)


def test_latency_aware_mode_compares_only_the_steps_still_executed(tmp_path):
    episode = write_episode_bag(tmp_path / "episode")
    offset = 0.01 * np.arange(H)[:, None] * np.ones((1, 4))
    # 0.25 s of latency with 0.1 s steps: steps 0, 1, 2 have passed when the chunk arrives
    report = evaluate([episode.path], commands_oracle(offset=offset, latency_s=0.25), tmp_path / "r",
                      latency_aware=True)
    assert report["by_horizon_step"]["compared"][:3] == [0, 0, 0]
    assert report["by_horizon_step"]["compared"][3:] == [5 * 4] * (H - 3)
    assert report["per_dim"]["shoulder"]["mae"] == pytest.approx(0.01 * np.mean(np.arange(3, H)), rel=1e-6)
    assert report["latency"]["inference_ms"]["p50"] == pytest.approx(250.0)
    assert report["latency"]["first_compared_step"]["p50"] == 3
    # an assumed latency (the robot's GPU, say) replaces the measured one
    assumed = evaluate([episode.path], commands_oracle(offset=offset, latency_s=0.25), tmp_path / "r2",
                       latency_aware=True, latency_s=0.05)
    assert assumed["by_horizon_step"]["compared"][:2] == [0, 5 * 4]
    # without latency-aware mode every step counts
    plain = evaluate([episode.path], commands_oracle(offset=offset, latency_s=0.25), tmp_path / "r3")
    assert plain["per_dim"]["shoulder"]["mae"] == pytest.approx(0.045, rel=1e-6)


def test_joint_names_that_do_not_match_the_config_name_bag_topic_and_names(tmp_path):
    renamed = write_episode_bag(tmp_path / "renamed", joint_names=["shoulder", "elbow", "wrist_roll", "finger"])
    with pytest.raises(BagError) as error:
        EpisodeReplay(renamed.path, CONFIG)
    message = str(error.value)
    assert str(renamed.path) in message and "topic '/joint_states'" in message
    assert "['shoulder', 'elbow', 'wrist_roll', 'finger']" in message and "['wrist']" in message

    commands = write_episode_bag(tmp_path / "commands", command_joint_names=["shoulder", "elbow", "wrist_roll"])
    with pytest.raises(BagError) as error:
        EpisodeReplay(commands.path, CONFIG)
    message = str(error.value)
    assert "topic '/arm_controller/joint_trajectory'" in message
    assert "commands joints ['shoulder', 'elbow', 'wrist_roll']" in message
    assert "action group 'arm'" in message and "['shoulder', 'elbow', 'wrist']" in message


def test_a_missing_camera_topic_names_bag_topic_and_what_is_there(tmp_path):
    episode = write_episode_bag(tmp_path / "episode", drop_topics=["/cameras/wrist/image_raw/compressed"])
    with pytest.raises(BagError) as error:
        EpisodeReplay(episode.path, CONFIG)
    message = str(error.value)
    assert "topic '/cameras/wrist/image_raw/compressed': not in the bag" in message
    assert "expected sensor_msgs/msg/CompressedImage" in message and "/cameras/base/image_raw" in message


def test_with_several_bags_the_good_ones_are_evaluated_and_failures_reported(tmp_path):
    good = write_episode_bag(tmp_path / "good", storage="mcap").path
    other = write_episode_bag(tmp_path / "other", storage="sqlite3", start_s=2000.0).path
    corrupt = write_episode_bag(tmp_path / "corrupt", storage="mcap").path
    data = corrupt / "corrupt.mcap"
    data.write_bytes(data.read_bytes()[:-100])
    renamed = write_episode_bag(tmp_path / "renamed", joint_names=["a", "b", "c", "d"]).path
    report = evaluate([good, corrupt, other, renamed], commands_oracle(), tmp_path / "report")
    assert report["totals"] == {**report["totals"], "bags": 4, "bags_ok": 2, "bags_failed": 2, "windows": 10}
    failed = {f["bag"]: f["error"] for f in report["failed_bags"]}
    assert set(failed) == {str(corrupt), str(renamed)}
    assert "truncated or corrupt" in failed[str(corrupt)]
    assert "topic '/joint_states'" in failed[str(renamed)] and "['a', 'b', 'c', 'd']" in failed[str(renamed)]
    assert report["overall"]["mae_normalized"] < 1e-9
    assert {report["best_episode"]["bag"], report["worst_episode"]["bag"]} == {str(good), str(other)}
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["failed_bags"] == report["failed_bags"]


def test_eval_bag_command_runs_the_tiny_model_and_writes_report_plots_and_summary(tmp_path):
    good = write_episode_bag(tmp_path / "good", duration_s=0.5).path
    renamed = write_episode_bag(tmp_path / "renamed", duration_s=0.3, joint_names=["a", "b", "c", "d"]).path
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "ki_vla_ros.cli", "eval-bag", str(good), str(renamed), "--config",
         str(CONFIG_PATH), "--checkpoint", "tiny", "--out", str(out), "--latency-aware", "--latency-s", "0.15",
         "--torch-threads", "1"],
        capture_output=True, text=True, timeout=240)
    assert run.returncode == 1, run.stderr[-2000:]  # one bag failed: non-zero, but a full report
    assert f"FAILED {renamed}" in run.stderr
    printed = json.loads(run.stdout.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    assert printed["windows"] == report["totals"]["windows"] == 2  # 0.5 s episode: t = 0 and 0.5 s
    # step k is due (k + 1) * 0.1 s after the observation: with 0.15 s latency step 0 has passed
    assert report["by_horizon_step"]["compared"][0] == 0 and report["by_horizon_step"]["compared"][1] > 0
    assert report["totals"]["bags_ok"] == 1 and report["totals"]["bags_failed"] == 1
    assert report["overall"]["mae_normalized"] > 0  # random weights are not an oracle
    assert report["latency"]["inference_ms"]["p50"] > 0
    assert set(report["per_dim"]) == set(CONFIG.action_names)
    assert len(report["by_horizon_step"]["mae_normalized"]) == H
    summary = (out / "summary.md").read_text()
    assert "| shoulder |" in summary and "## Failed bags" in summary and str(renamed) in summary
    for name in ("error_vs_horizon.png", "window_worst.png", "window_best.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 100, name


def test_a_camera_whose_stamps_are_offset_is_named_with_the_offset(tmp_path):
    """Regression: the error was '0 synchronized sets, 0 invalid, 0 policy errors; reasons: none'."""
    wrist = CONFIG.camera("wrist").topic
    episode = write_episode_bag(tmp_path / "episode", stamp_offsets_s={wrist: -30.0})
    report = evaluate([episode.path], commands_oracle(), tmp_path / "report")
    error = report["failed_bags"][0]["error"]
    assert "0 synchronized sets" in error
    assert f"'{wrist}' stamps are 30.000 s behind '/joint_states'" in error, error
    assert f"sync.slop_s = {CONFIG.sync.slop_s} s" in error


def test_an_unsupported_image_encoding_names_the_topic_and_the_camera(tmp_path):
    base = CONFIG.camera("base").topic
    episode = write_episode_bag(tmp_path / "episode", raw_encoding="16UC1")
    report = evaluate([episode.path], commands_oracle(), tmp_path / "report")
    error = report["failed_bags"][0]["error"]
    assert f"{base}: camera 'base' image is" in error and "16UC1" in error, error


def test_eval_bag_of_a_missing_bag_says_so_once_and_writes_no_report(tmp_path):
    missing = tmp_path / "no_such_bag"
    run = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "eval-bag", str(missing), "--config",
                          str(CONFIG_PATH), "--checkpoint", "tiny", "--out", str(tmp_path / "report")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.count(str(missing)) == 1 and "no such file or directory" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and "FAILED" not in run.stderr
    assert not (tmp_path / "report").exists()


def test_a_failed_bag_is_reported_once(tmp_path):
    renamed = write_episode_bag(tmp_path / "renamed", duration_s=0.3, joint_names=["a", "b", "c", "d"]).path
    run = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "eval-bag", str(renamed), "--config",
                          str(CONFIG_PATH), "--checkpoint", "tiny", "--out", str(tmp_path / "report"),
                          "--torch-threads", "1", "--no-plots"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 1
    assert (run.stdout + run.stderr).count(f"FAILED {renamed}") == 1, run.stdout + run.stderr
    assert f"FAILED {renamed}" in run.stderr
