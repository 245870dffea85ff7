"""The reach task: expert demonstrations succeed, have the documented layout, replay exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim.scene import Scene, SceneObject
from ki_vla_ros.sim.tasks import (INSTRUCTION_TEMPLATES, ReachTask, generate_episode,
                                  start_reach_episode, vqa_samples)

EMBODIMENTS = ["single_arm", "bimanual", "mobile"]


@pytest.mark.parametrize("name", EMBODIMENTS)
def test_the_scripted_expert_reaches_the_named_block(name):
    config = load_robot_config(name)
    results = [generate_episode(config, seed, max_image_side_px=32) for seed in range(20)]
    success_rate = np.mean([r["success"] for r in results])
    assert success_rate >= 0.95, [(r["target"], r["final_distance_m"]) for r in results]
    # The demonstrations are not trivial: the gripper starts away from the target.
    assert min(np.abs(np.diff(r["actions"], axis=0)).max() for r in results) > 0


@pytest.mark.parametrize("name", EMBODIMENTS)
def test_episodes_have_the_documented_shapes_and_finite_values(name):
    config = load_robot_config(name)
    episode = generate_episode(config, seed=3, steps=12)
    assert episode["state"].shape == (12, config.state_dim) and episode["state"].dtype == np.float32
    assert episode["actions"].shape == (12, config.action_dim) and episode["actions"].dtype == np.float32
    assert episode["action_names"] == config.action_names
    assert episode["state_names"] == config.state_names
    assert set(episode["images"]) == {c.name for c in config.cameras}
    for image in episode["images"].values():
        assert image.shape[0] == 12 and image.shape[3] == 3 and max(image.shape[1:3]) <= 96
        assert image.dtype == np.uint8
    assert np.all(np.isfinite(episode["state"])) and np.all(np.isfinite(episode["actions"]))
    np.testing.assert_allclose(episode["time_s"], np.arange(12) * config.chunk.step_duration_s)
    for j, joint in enumerate(config.joints):  # joint actions are absolute targets in limits
        lim = config.joint_limits[joint]
        assert np.all((episode["actions"][:, j] >= lim.lower) & (episode["actions"][:, j] <= lim.upper))
    assert episode["target"] in episode["instruction"]
    wordings = {t.format(target=episode["target"]) for t in INSTRUCTION_TEMPLATES}
    assert episode["instruction"] in wordings


def test_the_same_seed_gives_the_same_episode_and_another_seed_another():
    config = load_robot_config("bimanual")
    a, b = generate_episode(config, 5, steps=10), generate_episode(config, 5, steps=10)
    c = generate_episode(config, 6, steps=10)
    np.testing.assert_array_equal(a["actions"], b["actions"])
    assert all(np.array_equal(a["images"][k], b["images"][k]) for k in a["images"])
    assert not np.array_equal(a["images"]["cam_high"][0], c["images"]["cam_high"][0])


@pytest.mark.parametrize("name", ["single_arm", "mobile"])
def test_replaying_the_recorded_actions_in_the_same_setup_reproduces_the_episode(name):
    # Closed-loop evaluation uses start_reach_episode + apply_action: a policy that outputs
    # exactly the expert's actions must score exactly the expert's result.
    config = load_robot_config(name)
    episode = generate_episode(config, seed=11)
    dt = episode["step_duration_s"]
    robot, task = start_reach_episode(config, seed=11, step_duration_s=dt)
    assert task.instruction == episode["instruction"]
    for t, action in enumerate(episode["actions"]):
        robot.step(t * dt)
        np.testing.assert_allclose(robot.state_vector(), episode["state"][t], atol=1e-6)
        robot.apply_action(action, t * dt, dt)
    robot.step(len(episode["actions"]) * dt)
    assert task.success(robot) == episode["success"] is True


@pytest.mark.parametrize("name", ["single_arm", "bimanual"])
def test_noisy_demonstrations_show_the_expert_correcting_the_executed_noise(name):
    """action_noise_rad: the arm is pushed off the expert's path, the recorded actions are
    the expert's corrections from where it really is, and the seed's scene and task stay."""
    config = load_robot_config(name)
    clean = generate_episode(config, 7, steps=20, max_image_side_px=32)
    noisy = generate_episode(config, 7, steps=20, max_image_side_px=32, action_noise_rad=0.03)
    assert (noisy["instruction"], noisy["target"]) == (clean["instruction"], clean["target"])
    np.testing.assert_array_equal(noisy["images"][config.cameras[0].name][0], clean["images"][config.cameras[0].name][0])
    np.testing.assert_array_equal(noisy["state"][0], clean["state"][0])
    # The executed action is not the recorded one: the next state misses the label ...
    miss = np.abs(noisy["state"][1:, :len(config.joints)] - noisy["actions"][:-1, :len(config.joints)]).max()
    assert miss > 0.01
    # ... and the labels bring the gripper to the block anyway (within the last step's noise).
    assert noisy["final_distance_m"] < 0.05
    again = generate_episode(config, 7, steps=20, max_image_side_px=32, action_noise_rad=0.03)
    np.testing.assert_array_equal(again["actions"], noisy["actions"])
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match=f"action_noise_rad is {bad}; expected a finite standard deviation"):
            generate_episode(config, 7, steps=2, action_noise_rad=bad)


def test_reach_tasks_name_an_object_of_the_scene():
    scene = Scene((SceneObject("red", (0.5, 0.1)), SceneObject("green", (0.6, -0.2))))
    tasks = {ReachTask.sample(scene, np.random.default_rng(s)).target for s in range(20)}
    assert tasks == {"red block", "green block"}


def test_vqa_answers_describe_the_scene():
    scene = Scene((SceneObject("red", (0.5, 0.30)), SceneObject("blue", (0.35, -0.05)),
                   SceneObject("green", (0.6, -0.30))))
    answers = dict(vqa_samples(scene))
    assert answers["how many blocks are there?"] == "three"
    assert answers["is there a blue block?"] == "yes"
    assert answers["is there a yellow block?"] == "no"
    assert answers["what color is the object on the left?"] == "red"
    assert answers["what color is the object on the right?"] == "green"
    assert answers["what color is the block closest to the robot?"] == "blue"
    assert answers["is the red block left of the green block?"] == "yes"
    assert answers["is the green block left of the blue block?"] == "no"


def test_ambiguous_questions_are_left_out():
    scene = Scene((SceneObject("red", (0.5, 0.10)), SceneObject("blue", (0.6, 0.08))))
    questions = dict(vqa_samples(scene))
    assert "what color is the object on the left?" not in questions
    assert "is the red block left of the blue block?" not in questions
    assert questions["how many blocks are there?"] == "two"


def test_a_lead_in_drives_first_and_the_expert_demonstrates_from_where_it_left_the_arm():
    """generate_episode(lead_in=...): DAgger's relabelled states. Something else moves the
    arm off the start pose; the episode starts there and then, and the expert's labels still
    bring the gripper onto the named block."""
    config = load_robot_config("single_arm")
    dt = config.chunk.step_duration_s
    shoulder = config.action_names.index(config.joints[0])
    seen = {}

    def swing_the_shoulder(robot, task):
        seen["target"] = task.target
        action = robot.state_vector()[:config.action_dim].astype(np.float64)
        for t in range(4):
            action[shoulder] += 0.15
            robot.step(t * dt)
            robot.apply_action(action, t * dt, dt)
        robot.step(4 * dt)
        seen["state"] = robot.state_vector().copy()
        return 4 * dt

    plain = generate_episode(config, 9, steps=20, max_image_side_px=32)
    led = generate_episode(config, 9, steps=20, max_image_side_px=32, lead_in=swing_the_shoulder)
    assert seen["target"] == led["target"] == plain["target"]
    np.testing.assert_array_equal(led["state"][0], seen["state"])
    assert abs(led["state"][0][shoulder] - plain["state"][0][shoulder]) > 0.5
    assert led["time_s"][0] == pytest.approx(4 * dt) and led["time_s"][1] == pytest.approx(5 * dt)
    assert led["final_distance_m"] < 0.01 and led["success"]
