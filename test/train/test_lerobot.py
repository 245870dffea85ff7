"""LeRobot datasets in and out: `ki-vla convert LEROBOT_DIR --mapping` and `ki-vla export-lerobot`.

The LeRobot datasets are written with pyarrow and PyAV (lerobot itself does not install beside
the pinned torch; ki_vla_ros/train/lerobot.py says why): v3.0 by export_lerobot, v2.1 by
lerobot_v21.py. Video is lossy (H.264, yuv420p), so images are compared with a tolerance and
each decoded frame must be nearest to its own original (frames are not shifted or reordered).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ki_vla_ros.cli import main
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim import generate_episode
from ki_vla_ros.train.dataset import EpisodeDataset, write_dataset
from ki_vla_ros.train.lerobot import LeRobotError, LeRobotMapping, convert_lerobot
from lerobot_v21 import CAMERAS, write_v21

# joints shoulder, elbow, wrist, finger; 0.1 s steps
CONFIG_PATH = Path(__file__).resolve().parents[1] / "eval" / "test_arm.yaml"
MEAN_ABS_TOLERANCE = 6.0  # grey levels, mean over an episode's frames (H.264 at crf 10, 4:2:0 chroma)
V21_MAPPING = """\
state: observation.state
action: action
cameras: {base: observation.images.top, wrist: observation.images.hand}
joints: {shoulder: shoulder_pan.pos, elbow: elbow_flex.pos, wrist: wrist_roll.pos, finger: gripper.pos}
"""


@pytest.fixture(scope="module")
def arm():
    return load_robot_config(CONFIG_PATH)


def assert_video_frames_match(decoded: np.ndarray, original: np.ndarray) -> None:
    assert decoded.shape == original.shape
    diff = np.abs(decoded.astype(np.float32) - original.astype(np.float32))
    assert diff.mean() < MEAN_ABS_TOLERANCE, diff.mean()
    for t in range(len(original)):  # each frame is closest to its own original (or one identical to it)
        errors = [np.abs(decoded[t].astype(np.float32) - o).mean() for o in original]
        assert errors[t] <= min(errors) + 1e-6, (t, errors)


def _v21_episode(length: int, seed: int, task: str) -> dict:
    rng = np.random.default_rng(seed)
    state = np.cumsum(rng.normal(0, 0.05, (length, 5)), axis=0).astype(np.float32)
    images = {}
    for key, (h, w) in CAMERAS.items():
        frames = np.zeros((length, h, w, 3), np.uint8)
        frames[:] = np.linspace(40, 120, w, dtype=np.uint8)[None, None, :, None]
        for t in range(length):  # a bright square that moves 3 px per frame
            frames[t, 8:16, 2 + 3 * t: 10 + 3 * t] = (230, 200, 60)
        images[key] = frames
    return {"state": state, "action": np.roll(state, -1, axis=0), "images": images, "task": task}


@pytest.fixture(scope="module")
def v21_episodes():
    return [_v21_episode(6, 0, "pick up the cube"), _v21_episode(7, 1, "open the drawer")]


def test_exported_dataset_converts_back_with_frames_states_actions_tasks_and_timing(arm, tmp_path):
    demos = [generate_episode(arm, seed, steps=8, max_image_side_px=None) for seed in (0, 1)]
    ours = write_dataset(tmp_path / "ours", demos, robot=arm.name, state_names=arm.state_names,
                         action_names=arm.action_names, cameras=["base", "wrist"], step_duration_s=0.1)
    assert main(["export-lerobot", str(ours), str(tmp_path / "lerobot")]) == 0

    info = json.loads((tmp_path / "lerobot/meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["total_frames"] == 16
    assert info["features"]["observation.state"]["names"] == list(arm.state_names)
    frames = pq.read_table(tmp_path / "lerobot/data/chunk-000/file-000.parquet").to_pydict()
    np.testing.assert_allclose(frames["timestamp"][8:], np.arange(8) / 10, atol=1e-6)  # per episode, from 0
    tasks = pq.read_table(tmp_path / "lerobot/meta/tasks.parquet")
    assert tasks.to_pydict()["task"] == [d["instruction"] for d in demos]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # pandas index, as LeRobot

    mapping = tmp_path / "map.yaml"
    mapping.write_text("cameras: {base: observation.images.base, wrist: observation.images.wrist}\n")
    assert main(["convert", str(tmp_path / "lerobot"), str(tmp_path / "back"), "--config", str(CONFIG_PATH),
                 "--mapping", str(mapping)]) == 0
    back = EpisodeDataset.open(tmp_path / "back")
    assert back.step_duration_s == 0.1 and len(back) == 2 and back.norm_stats() is not None
    for i, demo in enumerate(demos):
        episode = back.episode(i)
        assert episode["length"] == 8 and episode["instruction"] == demo["instruction"]
        np.testing.assert_array_equal(episode["state"], demo["state"])
        np.testing.assert_array_equal(episode["actions"], demo["actions"])
        for camera in ("base", "wrist"):
            assert_video_frames_match(episode["images"][camera], demo["images"][camera])


def test_a_v21_dataset_with_its_own_joint_names_maps_onto_the_robot_config(arm, v21_episodes, tmp_path):
    root = write_v21(tmp_path / "so100", v21_episodes)
    mapping = tmp_path / "map.yaml"
    mapping.write_text(V21_MAPPING)

    out = convert_lerobot(root, arm, LeRobotMapping.load(mapping), tmp_path / "ours")
    dataset = EpisodeDataset.open(out)
    assert [e["length"] for e in dataset.episodes] == [6, 7]
    for i, source in enumerate(v21_episodes):
        episode = dataset.episode(i)
        assert episode["instruction"] == source["task"]
        # config order shoulder, elbow, wrist, finger = LeRobot entries 0, 1, 2, 3 (entry 4 unused)
        np.testing.assert_array_equal(episode["state"], source["state"][:, :4])
        np.testing.assert_array_equal(episode["actions"], source["action"][:, :4])
        assert_video_frames_match(episode["images"]["base"], source["images"]["observation.images.top"])
        assert_video_frames_match(episode["images"]["wrist"], source["images"]["observation.images.hand"])


def test_a_missing_feature_is_named_with_the_file(arm, v21_episodes, tmp_path):
    root = write_v21(tmp_path / "so100", v21_episodes)
    mapping = tmp_path / "map.yaml"
    mapping.write_text(V21_MAPPING.replace("observation.images.hand", "observation.images.side"))
    with pytest.raises(LeRobotError, match=r"meta/info.json has no feature 'observation.images.side' "
                                           r"\(the mapping's cameras.wrist\)"):
        convert_lerobot(root, arm, LeRobotMapping.load(mapping), tmp_path / "ours")
    assert not (tmp_path / "ours").exists()  # nothing half-written left behind

    mapping.write_text(V21_MAPPING.replace("gripper.pos", "jaw.pos"))
    with pytest.raises(LeRobotError, match=r"info.json feature 'observation.state' has no entry 'jaw.pos' "
                                           r"for config joint 'finger'"):
        convert_lerobot(root, arm, LeRobotMapping.load(mapping), tmp_path / "ours")


def test_a_video_shorter_than_its_frames_is_named(arm, v21_episodes, tmp_path):
    root = write_v21(tmp_path / "so100", v21_episodes, short_video_frames=2)
    mapping = tmp_path / "map.yaml"
    mapping.write_text(V21_MAPPING)
    with pytest.raises(LeRobotError, match=r"episode_000000.mp4 of feature 'observation.images.top' has 4 "
                                           r"frame\(s\) from 0.000 s; expected 6"):
        convert_lerobot(root, arm, LeRobotMapping.load(mapping), tmp_path / "ours")


def test_mismatched_frame_rates_are_named(arm, v21_episodes, tmp_path, capsys):
    mapping = tmp_path / "map.yaml"
    mapping.write_text(V21_MAPPING)
    root = write_v21(tmp_path / "video_fps", v21_episodes, video_fps=20)
    with pytest.raises(LeRobotError, match=r"episode_000000.mp4 of feature 'observation.images.top' runs at "
                                           r"20 fps; expected 10 fps"):
        convert_lerobot(root, arm, LeRobotMapping.load(mapping), tmp_path / "ours")

    root = write_v21(tmp_path / "dataset_fps", v21_episodes, fps=30)  # the robot config steps at 10 Hz
    assert main(["convert", str(root), str(tmp_path / "ours"), "--config", str(CONFIG_PATH),
                 "--mapping", str(mapping)]) == 2
    err = capsys.readouterr().err
    assert "meta/info.json fps is 30" in err and "chunk.step_duration_s 0.1" in err
