"""`ki-vla check`: a checkpoint and a recording are compared with the robot config before the robot moves.

Checkpoints are tiny models saved by save_pretrained; bags are written by rosbags (sim_bags.py)
with images made to be alive, dead, identical or swapped.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ki_vla_ros.cli import main
from ki_vla_ros.eval.preflight import FAIL, PASS, WARN, run_checks
from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.model.normalize import NormStats
from episode_bags import CONFIG_PATH, arm_config


def _training_tests_module(name: str):
    """A helper module of test/train, loaded from its file: putting test/train on sys.path here
    would make test/train's `from conftest import ...` find another directory's conftest."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "train" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_demo_bag = _training_tests_module("sim_bags").write_demo_bag

STEPS = 12


@pytest.fixture(scope="module")
def arm():
    return arm_config()  # shoulder, elbow, wrist, finger (0..0.04 m); cameras base (slot 0), wrist (slot 1)


def joint_data(arm, steps: int = 200) -> np.ndarray:
    """Joint positions inside the limits, every joint moving: [steps, 4]."""
    lower = np.array([arm.joint_limits[j].lower for j in arm.joints])
    upper = np.array([arm.joint_limits[j].upper for j in arm.joints])
    phase = np.linspace(0, 2 * np.pi, steps)[:, None] + np.arange(4)
    return ((lower + upper) / 2 + 0.4 * (upper - lower) * np.sin(phase)).astype(np.float32)


def save_checkpoint(path, arm, *, state=None, actions=None, names=None, step_s=0.1, horizon=10,
                    delta=(0, 1, 2)):
    """A tiny model as `ki-vla train` would save it for `arm` (arguments: what to get wrong)."""
    data = joint_data(arm)
    model = KIVLA(KIVLAConfig.preset("tiny", action_horizon=horizon, delta_action_dims=tuple(delta)))
    model.norm_stats = {"state": NormStats.from_data(data if state is None else state),
                        "actions": NormStats.from_data(data if actions is None else actions)}
    model.data_layout = {"state_names": list(names or arm.state_names), "action_names": list(names or arm.action_names),
                         "step_duration_s": step_s}
    model.save_pretrained(path)
    return path


def by_name(results) -> dict:
    return {r.name: r for r in results}


def test_a_checkpoint_trained_for_the_robot_passes_every_check(arm, tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "ckpt", arm)
    results = run_checks(arm, checkpoint)
    assert [r.name for r in results] == [
        "checkpoint files", "state dims", "state names", "action dims", "action names", "delta action dims",
        "norm stats vs limits", "image slots", "image size", "text tokenizer", "horizon", "step duration"]
    assert {r.name: r.status for r in results if r.status != PASS} == {}

    assert main(["check", "--config", str(CONFIG_PATH), "--checkpoint", str(checkpoint)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["check", "status", "expected", "found"]
    assert len(table) == 2 + len(results) + 1  # header, rule, one line per check, the tally
    assert "0 FAIL, 0 WARN, 12 PASS" in table[-1]


def test_another_robots_checkpoint_fails_naming_what_was_expected_and_found(arm, tmp_path, capsys):
    data = joint_data(arm)
    gripper_in_0_1 = data.copy()
    gripper_in_0_1[:, 3] = np.linspace(0.0, 1.0, len(data))  # a gripper scaled 0..1, the robot's is 0..0.04 m
    checkpoint = save_checkpoint(tmp_path / "ckpt", arm, state=gripper_in_0_1, actions=np.c_[data, data[:, :1]],
                                 names=["elbow", "shoulder", "wrist", "finger"], step_s=0.05, horizon=5,
                                 delta=(0, 1, 2, 3))
    results = by_name(run_checks(arm, checkpoint))

    assert results["action dims"].status == FAIL and results["action dims"].found == "norm stats 'actions': 5"
    assert results["state names"].status == FAIL
    assert "dim 0 trained as 'elbow', config 'shoulder'" in results["state names"].found
    assert results["norm stats vs limits"].status == FAIL
    assert "state finger 0.01..0.99 vs limits 0..0.04" in results["norm stats vs limits"].found
    assert results["delta action dims"].status == WARN and "gripper finger" in results["delta action dims"].found
    assert results["horizon"].status == FAIL and results["horizon"].found == "model predicts 5 steps"
    assert results["step duration"].status == FAIL and "0.05 s" in results["step duration"].found
    assert results["state dims"].status == PASS

    assert main(["check", "--config", str(CONFIG_PATH), "--checkpoint", str(checkpoint)]) == 1
    assert "6 FAIL, 1 WARN, 5 PASS" in capsys.readouterr().out  # dims, both names, limits, horizon, step


def test_a_delta_dim_on_a_non_joint_or_another_joints_state_fails(arm, tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ckpt", arm, delta=(4,))  # past the robot's 4 action dims
    result = by_name(run_checks(arm, checkpoint))["delta action dims"]
    assert result.status == FAIL and "dims [4]" in result.found


def _episode(arm, base, wrist) -> dict:
    state = joint_data(arm, STEPS)
    return {"state": state, "actions": np.roll(state, -1, axis=0), "instruction": "wave the arm",
            "images": {"base": base, "wrist": wrist}}


def _scene(steps: int, shift_px: int, seed: int, shape=(48, 64)) -> np.ndarray:
    """A smooth striped scene that slides shift_px per frame (image change grows with the shift):
    [steps, H, W, 3] uint8."""
    x = np.arange(shape[1] + steps * shift_px + 1)[None, :, None] + 8 * seed
    y = np.arange(shape[0])[:, None, None]
    texture = 128 + 100 * np.sin(2 * np.pi * (x / 32 + y / 64 + np.array([0.0, 0.3, 0.6]) + 0.37 * seed))
    return np.stack([texture[:, t * shift_px: t * shift_px + shape[1]] for t in range(steps)]).astype(np.uint8)


def _bag_results(arm, tmp_path, base, wrist, checkpoint) -> dict:
    bag = write_demo_bag(tmp_path / "bag", arm, _episode(arm, base, wrist))
    return by_name(run_checks(arm, checkpoint, bag))


@pytest.fixture(scope="module")
def checkpoint(arm, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", arm)


def test_a_recording_with_live_distinct_cameras_passes(arm, tmp_path, checkpoint):
    # the wrist view slides fast with the arm, the base view a little
    results = _bag_results(arm, tmp_path, _scene(STEPS, 1, 0), _scene(STEPS, 4, 1, (40, 40)), checkpoint)
    for name in ("bag state vs norm stats", "camera base", "camera wrist", "cameras distinct",
                 "wrist camera motion"):
        assert results[name].status == PASS, results[name]


def test_a_dead_camera_fails_and_identical_cameras_fail(arm, tmp_path, checkpoint):
    frozen = np.repeat(_scene(1, 0, 1, (40, 40)), STEPS, axis=0)
    results = _bag_results(arm, tmp_path / "dead", _scene(STEPS, 1, 0), frozen, checkpoint)
    assert results["camera wrist"].status == FAIL and "all 12 images identical" in results["camera wrist"].found

    same = _scene(STEPS, 2, 0)
    results = _bag_results(arm, tmp_path / "same", same, same.copy(), checkpoint)
    assert results["cameras distinct"].status == FAIL
    assert "base = wrist (/cameras/base/image_raw, /cameras/wrist/image_raw/compressed)" in \
        results["cameras distinct"].found


def test_swapped_camera_topics_are_flagged(arm, tmp_path, checkpoint):
    # the "wrist" topic shows the slow base view and the "base" topic the fast wrist view
    results = _bag_results(arm, tmp_path, _scene(STEPS, 4, 0), _scene(STEPS, 1, 1, (40, 40)), checkpoint)
    assert results["wrist camera motion"].status == WARN
    assert "['wrist'] change least: swapped topics?" in results["wrist camera motion"].found
