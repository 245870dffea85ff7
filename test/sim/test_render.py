"""Camera images: deterministic, every block in its color where the geometry puts it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim.kinematics import Pose2D
from ki_vla_ros.sim.render import overview_view
from ki_vla_ros.sim.robot import SimRobot
from ki_vla_ros.sim.scene import BLOCK_COLORS_RGB, Scene, SceneObject

SCENE = Scene((SceneObject("red", (0.70, 0.20)), SceneObject("blue", (0.30, -0.25)),
               SceneObject("yellow", (0.62, -0.05))))


@pytest.fixture(scope="module")
def single_arm():
    return load_robot_config("single_arm")


def pixels_of(image: np.ndarray, rgb) -> np.ndarray:
    rows, cols = np.nonzero(np.all(image == np.array(rgb, np.uint8), axis=-1))
    return np.stack([cols, rows], axis=-1)


def test_rendering_is_deterministic(single_arm):
    first = SimRobot(single_arm, seed=7).images()
    again = SimRobot(single_arm, seed=7).images()
    for name in first:
        assert first[name].dtype == np.uint8 and first[name].ndim == 3
        assert first[name].tobytes() == again[name].tobytes()
    other = SimRobot(single_arm, seed=8).images()
    assert first["base"].tobytes() != other["base"].tobytes()


def test_blocks_appear_in_their_color_at_the_expected_overview_pixel(single_arm):
    robot = SimRobot(single_arm, scene=SCENE, image_size_px=(96, 96))
    image = robot.images()["base"]
    # Overview: 1.0 m across 96 px centred 0.45 m ahead; forward is up, left (+y) is left.
    for obj in SCENE.objects:
        x, y = obj.position_xy_m
        expected_col, expected_row = 47.5 - y * 96, 47.5 - (x - 0.45) * 96
        found = pixels_of(image, obj.rgb)
        assert len(found) >= 16, f"{obj.name} not visible"
        np.testing.assert_allclose(found.mean(axis=0), [expected_col, expected_row], atol=0.7)
        assert tuple(image[round(expected_row), round(expected_col)]) == obj.rgb


def test_the_view_helper_agrees_with_the_image_at_full_camera_size(single_arm):
    robot = SimRobot(single_arm, scene=SCENE)
    image = robot.images()["base"]
    assert image.shape == (480, 640, 3)  # the config's camera size
    view = overview_view(robot.base_pose, 640, 480)
    for obj in SCENE.objects:
        col, row = np.round(view.world_to_pixel(obj.xy)).astype(int)
        assert tuple(image[row, col]) == obj.rgb


def test_the_overview_camera_rides_on_a_mobile_base():
    config = load_robot_config("mobile")
    parked = SimRobot(config, scene=SCENE, image_size_px=(96, 96))
    moved = SimRobot(config, scene=SCENE, image_size_px=(96, 96), base_pose=Pose2D(0.1, 0.0, 0.0))
    red = BLOCK_COLORS_RGB["red"]
    before = pixels_of(parked.images()["cam_high"], red).mean(axis=0)
    shift = pixels_of(moved.images()["cam_high"], red).mean(axis=0) - before
    np.testing.assert_allclose(shift, [0.0, 0.1 * 96], atol=0.7)  # 0.1 m closer: lower in the image


def test_the_wrist_camera_centres_on_its_gripper_and_shows_the_block_under_it():
    config = load_robot_config("bimanual")
    scene = Scene((SceneObject("red", (0.45, 0.30)), SceneObject("blue", (0.45, -0.30))))
    probe = SimRobot(config, scene=scene)
    left = next(a for a in probe.arms if a.name == "left_arm")
    shoulder, elbow = left.inverse(scene.object("red block").xy)
    robot = SimRobot(config, scene=scene, image_size_px=(64, 64),
                     home={left.shoulder_joint: shoulder, left.elbow_joint: elbow})
    assert robot.reached("red block", tolerance_m=1e-6)
    images = robot.images()
    assert tuple(images["cam_left_wrist"][32, 32]) == BLOCK_COLORS_RGB["red"]
    assert tuple(images["cam_right_wrist"][32, 32]) != BLOCK_COLORS_RGB["red"]


def test_camera_sizes_follow_config_override_and_scale(single_arm):
    assert {n: i.shape for n, i in SimRobot(single_arm).images().items()} == {
        "base": (480, 640, 3), "wrist": (96, 96, 3)}  # wrist has no size in config: default
    assert {n: i.shape for n, i in SimRobot(single_arm, image_size_px=(224, 224)).images().items()} == {
        "base": (224, 224, 3), "wrist": (224, 224, 3)}
    assert {n: i.shape for n, i in SimRobot(single_arm, max_image_side_px=128).images().items()} == {
        "base": (96, 128, 3), "wrist": (96, 96, 3)}


def test_rendering_a_224px_image_is_fast_enough_for_a_camera_stream(single_arm):
    # A loose guard against an accidental slow path (the real numbers come from
    # `python -m ki_vla_ros.sim.benchmark`): 2 cameras at 224 px well under 20 ms.
    robot = SimRobot(single_arm, seed=1, image_size_px=(224, 224))
    robot.images()
    start = time.perf_counter()
    for _ in range(20):
        robot.images()
    assert (time.perf_counter() - start) / 20 < 0.020
