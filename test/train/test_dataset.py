"""The dataset format: written, read back, checked; stats and FAST fitted on it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ki_vla_ros.cli import main
from ki_vla_ros.model.normalize import normalize
from ki_vla_ros.train.dataset import (
    DatasetError, EpisodeDataset, action_chunks, compute_norm_stats, ensure_fast_tokenizer, write_dataset)
from conftest import SIM_EPISODES, SIM_STEPS


def _episode(length: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"images": {"front": rng.integers(0, 256, (length, 12, 16, 3), dtype=np.uint8)},
            "state": rng.normal(size=(length, 3)).astype(np.float32),
            "actions": rng.normal(size=(length, 2)).astype(np.float32),
            "instruction": "stack the cups", "success": True}


def _write(path, episodes, **kwargs):
    return write_dataset(path, episodes, robot="arm", state_names=["a", "b", "c"], action_names=["x", "y"],
                         cameras=["front"], step_duration_s=0.05, **kwargs)


def test_written_episodes_read_back_identically(tmp_path):
    episodes = [_episode(5, 0), _episode(7, 1)]
    root = _write(tmp_path / "d", episodes, vlm_samples=[{"episode": 1, "frame": 6, "question": "q?", "answer": "a"}])

    dataset = EpisodeDataset.open(root)
    assert len(dataset) == 2 and dataset.num_frames == 12
    meta = json.loads((root / "meta.json").read_text())
    assert meta["format"] == "ki_vla_dataset/1" and meta["episodes"][1] == \
        {"index": 1, "length": 7, "instruction": "stack the cups", "success": True}
    got = dataset.episode(1)
    np.testing.assert_array_equal(got["images"]["front"], episodes[1]["images"]["front"])
    np.testing.assert_array_equal(got["actions"], episodes[1]["actions"])
    np.testing.assert_array_equal(dataset.frame_images(1, 3)["front"], episodes[1]["images"]["front"][3])
    assert dataset.vlm_samples() == [{"episode": 1, "frame": 6, "question": "q?", "answer": "a"}]


def test_column_major_state_and_actions_are_stored_in_their_own_layout(tmp_path):
    episode = _episode(6, 2)
    # a column selection (what mapping joints onto a vector does) gives Fortran-ordered arrays
    episode["state"] = np.asfortranarray(episode["state"])
    episode["actions"] = np.random.default_rng(3).normal(size=(2, 6)).astype(np.float32).T
    assert not episode["state"].flags.c_contiguous and not episode["actions"].flags.c_contiguous

    got = EpisodeDataset.open(_write(tmp_path / "d", [episode])).episode(0)
    np.testing.assert_array_equal(got["state"], episode["state"])
    np.testing.assert_array_equal(got["actions"], episode["actions"])


def test_chunks_past_the_end_of_an_episode_repeat_its_last_action():
    actions = np.arange(8, dtype=np.float32).reshape(4, 2)
    chunks = action_chunks(actions, horizon=3)  # [T, H, Da]
    assert chunks.shape == (4, 3, 2)
    np.testing.assert_array_equal(chunks[2], actions[[2, 3, 3]])
    np.testing.assert_array_equal(chunks[3], actions[[3, 3, 3]])


def test_a_corrupt_episode_file_is_named_when_the_dataset_opens(tmp_path):
    root = _write(tmp_path / "d", [_episode(5, 0), _episode(5, 1)])
    victim = root / "episodes" / "episode_000001.safetensors"
    victim.write_bytes(victim.read_bytes()[:100])  # truncated mid-header
    with pytest.raises(DatasetError, match="episode_000001.safetensors is not a readable safetensors file"):
        EpisodeDataset.open(root)


def test_an_episode_that_disagrees_with_meta_json_is_named(tmp_path):
    root = _write(tmp_path / "d", [_episode(5, 0)])
    meta = json.loads((root / "meta.json").read_text())
    meta["episodes"][0]["length"] = 6
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"episode_000000.safetensors tensor 'state' is F32 \[5, 3\]; "
                                           r"expected F32 \[6, 3\]"):
        EpisodeDataset.open(root)


def test_bad_input_episodes_are_refused_with_what_was_expected(tmp_path):
    bad = _episode(5)
    bad["actions"] = bad["actions"][:, :1]
    with pytest.raises(DatasetError, match=r"episode 0 actions has shape \(5, 1\); expected \[T > 0, 2\]"):
        _write(tmp_path / "a", [bad])
    nan = _episode(5)
    nan["state"][2, 1] = np.nan
    with pytest.raises(DatasetError, match=r"episode 0 state\[2, 1\] is nan"):
        _write(tmp_path / "b", [nan])
    with pytest.raises(DatasetError, match="vlm sample 0"):
        _write(tmp_path / "c", [_episode(5)], vlm_samples=[{"episode": 3, "frame": None, "question": "q", "answer": "a"}])
    with pytest.raises(DatasetError, match="has no meta.json"):
        EpisodeDataset.open(tmp_path / "nowhere")


def test_norm_stats_and_fast_are_fitted_on_the_normalized_chunks(sim_dataset):
    stats = compute_norm_stats(sim_dataset)
    assert stats["state"].dim == len(sim_dataset.state_names) and stats["actions"].dim == 8
    fast = ensure_fast_tokenizer(sim_dataset, horizon=10, vocab_size=256)  # fitted by the fixture: loaded
    chunk = normalize(sim_dataset.chunks(10)[7], stats["actions"])
    decoded = fast.decode(fast.encode(chunk), 10, 8)
    assert np.abs(decoded - chunk).max() < np.sqrt(10) * 0.5 / fast.scale


def test_make_sim_dataset_writes_demonstrations_with_questions_about_their_scenes(sim_dataset, tmp_path, capsys):
    assert len(sim_dataset) == SIM_EPISODES and sim_dataset.lengths().tolist() == [SIM_STEPS] * SIM_EPISODES
    assert sim_dataset.camera_slots == {"base": 0, "wrist": 1}
    questions = {row["question"] for row in sim_dataset.vlm_samples()}
    assert "how many blocks are there?" in questions and "describe the scene" in questions
    assert "block" in sim_dataset.instruction(0)

    assert main(["make-sim-dataset", "--config", "single_arm", "--episodes", "1", "--steps", "4",
                 "--image-side", "24", str(tmp_path / "cli")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 1 and summary["frames"] == 4 and summary["vlm_samples"] > 3
    assert max(EpisodeDataset.open(tmp_path / "cli").frame_images(0, 0)["base"].shape) == 24
