"""Observation assembly: image decoding, joint order by name, and what is refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.observation import (
    ObservationAssembler,
    ObservationError,
    image_from_compressed,
    image_from_raw,
    joint_state_vector,
)

RNG = np.random.default_rng(0)


def rgb_image(height=48, width=64):
    return RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_rgb8_is_a_zero_copy_view_of_the_message_data():
    image = rgb_image()
    data = image.tobytes()
    decoded = image_from_raw("rgb8", 48, 64, 64 * 3, data)
    np.testing.assert_array_equal(decoded, image)
    assert np.shares_memory(decoded, np.frombuffer(data, np.uint8))


@pytest.mark.parametrize("encoding, to_message", [
    ("bgr8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)),
    ("rgba8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)),
    ("bgra8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)),
])
def test_color_encodings_come_out_as_rgb(encoding, to_message):
    image = rgb_image()
    message = to_message(image)
    decoded = image_from_raw(encoding, 48, 64, message.shape[1] * message.shape[2], message.tobytes())
    np.testing.assert_array_equal(decoded, image)


def test_mono8_is_replicated_into_three_channels():
    gray = RNG.integers(0, 256, size=(10, 12), dtype=np.uint8)
    decoded = image_from_raw("mono8", 10, 12, 12, gray.tobytes())
    assert decoded.shape == (10, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(decoded[..., c], gray)


@pytest.mark.parametrize("encoding, channels", [("rgb8", 3), ("bgr8", 3), ("mono8", 1)])
def test_row_padding_beyond_width_is_skipped(encoding, channels):
    """Drivers pad rows to an alignment: step > width * channels."""
    height, width, step = 6, 10, 10 * channels + 7
    pixels = RNG.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    padded = np.full((height, step), 255, dtype=np.uint8)
    padded[:, : width * channels] = pixels.reshape(height, -1)
    decoded = image_from_raw(encoding, height, width, step, padded.tobytes())
    expected = {"rgb8": pixels, "bgr8": pixels[..., ::-1],
                "mono8": np.repeat(pixels, 3, axis=2)}[encoding]
    np.testing.assert_array_equal(decoded, expected)


def test_bgra16_is_rejected_with_the_expected_message():
    with pytest.raises(ObservationError) as error:
        image_from_raw("bgra16", 480, 640, 640 * 8, bytes(640 * 8 * 480), camera="wrist")
    assert str(error.value) == ("camera 'wrist' image is 640x480 bgra16; expected one of "
                                "rgb8, bgr8, mono8, rgba8, bgra8")


def test_data_shorter_than_step_times_height_is_rejected():
    with pytest.raises(ObservationError, match=r"camera 'base' 64x48 rgb8 image has 9000 bytes of "
                                               r"data; expected step\*height = 192\*48 = 9216"):
        image_from_raw("rgb8", 48, 64, 192, bytes(9000), camera="base")


def test_step_smaller_than_a_row_is_rejected():
    with pytest.raises(ObservationError, match="row step is 100 bytes; expected at least width\\*3 = 192"):
        image_from_raw("rgb8", 48, 64, 100, bytes(4800), camera="base")


@pytest.mark.parametrize("extension", [".png", ".jpg"])
def test_compressed_images_decode_to_rgb(extension):
    image = np.zeros((32, 40, 3), dtype=np.uint8)
    image[..., 0] = 200  # red in RGB
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    decoded = image_from_compressed(extension[1:], encoded.tobytes())
    assert decoded.shape == (32, 40, 3)
    assert abs(int(decoded[..., 0].mean()) - 200) <= 2 and decoded[..., 2].mean() < 3


def test_undecodable_compressed_data_is_an_error():
    with pytest.raises(ObservationError, match=r"camera 'wrist' compressed image \(format 'jpeg', 11 bytes\) could not be decoded"):
        image_from_compressed("jpeg", b"not a jpeg!", camera="wrist")
    with pytest.raises(ObservationError, match="is empty"):
        image_from_compressed("jpeg", b"", camera="wrist")


def test_joint_states_are_reordered_by_name_and_extra_joints_ignored():
    state = joint_state_vector(["b", "extra", "a"], [2.0, 9.0, 1.0], ["a", "b"])
    assert state.dtype == np.float32
    np.testing.assert_array_equal(state, [1.0, 2.0])


def test_missing_joint_raises_naming_the_joint_and_the_names_received():
    with pytest.raises(ObservationError) as error:
        joint_state_vector(["a", "c"], [1.0, 3.0], ["a", "b", "c"])
    assert str(error.value) == "joint 'b' is missing from the joint state; received joints ['a', 'c']"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_joint_position_raises_naming_the_joint(bad):
    with pytest.raises(ObservationError, match=f"joint 'b' position is {bad}"):
        joint_state_vector(["a", "b"], [1.0, bad], ["a", "b"])


def test_names_and_positions_of_different_length_are_refused():
    with pytest.raises(ObservationError, match="2 names but 1 positions"):
        joint_state_vector(["a", "b"], [1.0], ["a"])


def single_arm_images(config):
    return {"base": rgb_image(480, 640), "wrist": rgb_image(224, 224)}


def test_assembly_puts_cameras_into_their_model_slots_and_joints_in_config_order():
    config = load_robot_config("single_arm")
    assembler = ObservationAssembler(config)
    images = single_arm_images(config)
    names = list(reversed(config.joints))
    positions = [float(i) for i in range(len(names))]
    observation = assembler.assemble(12.5, images, names, positions, prompt="pick up the cube")
    assert observation.images[0] is images["base"] and observation.images[1] is images["wrist"]
    np.testing.assert_array_equal(observation.state, positions[::-1])
    assert observation.base_velocity is None
    assert observation.model_state().shape == (config.state_dim,)


def test_an_image_of_the_wrong_configured_size_is_refused():
    config = load_robot_config("single_arm")
    images = single_arm_images(config) | {"base": rgb_image(240, 320)}
    with pytest.raises(ObservationError, match="camera 'base' image is 320x240; expected the configured 640x480"):
        ObservationAssembler(config).assemble(1.0, images, config.joints, [0.0] * 8, "p")


def test_a_missing_camera_image_is_refused():
    config = load_robot_config("single_arm")
    with pytest.raises(ObservationError, match="camera 'wrist' has no image"):
        ObservationAssembler(config).assemble(1.0, {"base": rgb_image(480, 640)}, config.joints,
                                              [0.0] * 8, "p")


def test_a_float_image_is_refused():
    config = load_robot_config("single_arm")
    images = single_arm_images(config) | {"wrist": np.zeros((224, 224, 3), np.float32)}
    with pytest.raises(ObservationError, match="camera 'wrist' image is float32 .* expected uint8"):
        ObservationAssembler(config).assemble(1.0, images, config.joints, [0.0] * 8, "p")


def test_mobile_observation_appends_base_velocity_to_the_state():
    config = load_robot_config("mobile")
    images = {c.name: rgb_image(480, 640) for c in config.cameras}
    observation = ObservationAssembler(config).assemble(
        3.0, images, config.joints, [0.1] * 14, "go", base_velocity={"vx": 0.2, "vy": 0.0, "wz": -0.1})
    np.testing.assert_allclose(observation.base_velocity, [0.2, 0.0, -0.1])
    assert observation.model_state().shape == (17,)
    with pytest.raises(ObservationError, match="no base velocity from '/odom'"):
        ObservationAssembler(config).assemble(3.0, images, config.joints, [0.1] * 14, "go")
