"""`ki-vla convert`: recorded bags become the episodes that were recorded; bad bags are named."""
from __future__ import annotations

import numpy as np
import pytest

from ki_vla_ros.cli import main
from ki_vla_ros.eval.bag_io import BagError
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim import generate_episode
from ki_vla_ros.train.convert import convert_bags
from ki_vla_ros.train.dataset import EpisodeDataset
from sim_bags import write_demo_bag

from conftest import HERE

CONFIG_PATH = HERE.parent / "eval" / "test_arm.yaml"  # 64x48 raw base camera + compressed wrist camera
STEPS = 8


@pytest.fixture(scope="module")
def arm():
    return load_robot_config(CONFIG_PATH)


@pytest.fixture(scope="module")
def demos(arm):
    return [generate_episode(arm, seed, steps=STEPS, max_image_side_px=None) for seed in (0, 1)]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_converted_bags_give_back_the_recorded_episodes(arm, demos, tmp_path, storage):
    bags = [write_demo_bag(tmp_path / f"demo_{i}", arm, ep, storage=storage) for i, ep in enumerate(demos)]
    root, summaries = convert_bags(bags, arm, tmp_path / "data")

    dataset = EpisodeDataset.open(root)
    assert len(dataset) == 2 and dataset.cameras == ("base", "wrist")
    assert dataset.state_names == arm.state_names and dataset.action_names == arm.action_names
    for i, demo in enumerate(demos):
        episode = dataset.episode(i)
        assert episode["length"] == STEPS  # every step has its commanded target
        assert episode["instruction"] == demo["instruction"]
        np.testing.assert_allclose(episode["state"], demo["state"], atol=1e-6)
        np.testing.assert_allclose(episode["actions"], demo["actions"], atol=1e-6)
        for camera in ("base", "wrist"):  # raw and lossless PNG: bit-identical images
            np.testing.assert_array_equal(episode["images"][camera], demo["images"][camera])
        assert "commands" in summaries[i].action_sources["arm"]
    assert dataset.norm_stats() is not None


def test_without_recorded_commands_the_next_measured_joint_state_is_the_action(arm, demos, tmp_path):
    bag = write_demo_bag(tmp_path / "no_commands", arm, demos[0], commands=False)
    root, summaries = convert_bags([bag], arm, tmp_path / "data")

    episode = EpisodeDataset.open(root).episode(0)
    assert episode["length"] == STEPS - 1  # the last observation has no next joint state
    np.testing.assert_allclose(episode["actions"], demos[0]["state"][1:], atol=1e-6)
    assert "measured" in summaries[0].action_sources["arm"]


def test_a_bag_without_a_camera_topic_is_rejected_naming_bag_and_topic(arm, demos, tmp_path):
    good = write_demo_bag(tmp_path / "good", arm, demos[0])
    bad = write_demo_bag(tmp_path / "bad", arm, demos[1], drop_topics=("/cameras/wrist/image_raw/compressed",))
    with pytest.raises(BagError) as info:
        convert_bags([good, bad], arm, tmp_path / "data")
    assert str(bad) in str(info.value) and "/cameras/wrist/image_raw/compressed" in str(info.value)
    assert not (tmp_path / "data").exists()  # nothing half-written is left behind


def test_joint_names_that_miss_configured_joints_are_reported(arm, demos, tmp_path):
    bag = write_demo_bag(tmp_path / "renamed", arm, demos[0], joint_names=["j1", "j2", "j3", "j4"])
    with pytest.raises(BagError, match=r"lack the configured joints \['shoulder'"):
        convert_bags([bag], arm, tmp_path / "data")


def test_the_cli_skips_bad_bags_on_request_and_exits_2_otherwise(arm, demos, tmp_path, capsys):
    good = write_demo_bag(tmp_path / "good", arm, demos[0])
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "truncated_0.mcap").write_bytes(b"\x89MCAP0\r\n garbage")

    assert main(["convert", str(good), str(truncated), str(tmp_path / "a"), "--config", str(CONFIG_PATH)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(truncated) in err

    assert main(["convert", str(good), str(truncated), str(tmp_path / "b"), "--config", str(CONFIG_PATH),
                 "--skip-bad", "--instruction", "reach the block"]) == 0
    out, err = capsys.readouterr()
    assert f"SKIPPED {truncated}" in err
    dataset = EpisodeDataset.open(tmp_path / "b")
    assert len(dataset) == 1 and dataset.instruction(0) == "reach the block"
