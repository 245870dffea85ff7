"""The node's client driving a server that speaks like openpi: `ki-vla serve --openpi-metadata`
(a real process on loopback) sends no model sizes ({} on connect) and replies with actions and
server_timing only, and reads the LIBERO / DROID / ALOHA dicts exactly as openpi's servers get
them from openpi's example clients. RemotePredictor in each openpi layout takes its sizes from
the robot, the horizon from the replies."""

from __future__ import annotations

import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.model_loading import load_predictor
from ki_vla_ros.runtime.policy import PolicyError
from ki_vla_ros.serve.client import RemotePredictor, openpi_observation
from ki_vla_ros.serve.layouts import parse_request

from server_process import ServerProcess


@pytest.fixture(scope="module")
def demo_server():
    process = ServerProcess("--checkpoint", "demo", "--openpi-metadata")
    yield process
    process.stop()


def camera_images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (180, 320, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("layout", ["libero", "droid"])
def test_remote_predictor_in_an_openpi_layout_acts_without_sizes_in_the_metadata(demo_server, layout):
    remote = RemotePredictor(demo_server.uri, timeout_s=30.0, layout=layout, state_dim=8, action_dim=8)
    assert remote.metadata == {} and remote.horizon == 10  # learned from the start-up probe's reply
    chunk = remote.predict_chunk(camera_images(2), np.linspace(-0.5, 0.5, 8), "move to the red block")
    assert chunk.shape == (10, 8) and chunk.dtype == np.float32 and np.all(np.isfinite(chunk))
    assert set(remote.last_server_timing) <= {"infer_ms", "prev_total_ms"} and remote.last_server_timing["infer_ms"] > 0
    with pytest.raises(PolicyError, match="no noise and no running chunk"):
        remote.predict_chunk(camera_images(2), np.zeros(8), "x", previous_actions=chunk[2:], inference_delay_steps=1)
    remote.close()


def test_a_robot_whose_state_the_openpi_server_refuses_fails_at_start_naming_the_field(demo_server):
    with pytest.raises(PolicyError, match="refused the request: bad request: field 'observation/joint_position"
                                          r"\+observation/gripper_position' has 9 values; the model's state has 8"):
        RemotePredictor(demo_server.uri, timeout_s=30.0, layout="droid", state_dim=9, action_dim=8)


def test_aloha_layout_from_the_bimanual_config_drives_a_three_camera_server():
    server = ServerProcess("--checkpoint", "tiny", "--config", "bimanual", "--openpi-metadata")
    try:
        config = load_robot_config("bimanual")
        assert config.model.remote_layout == "ki_vla"  # the default
        remote = RemotePredictor(server.uri, timeout_s=30.0, layout="aloha", state_dim=config.state_dim,
                                 action_dim=config.action_dim)
        assert (remote.num_cameras, remote.state_dim, remote.action_dim) == (3, 14, 14)
        chunk = remote.predict_chunk(camera_images(2) + [None], np.zeros(14), "fold the towel")
        assert chunk.shape == (remote.horizon, 14)
        remote.close()
    finally:
        server.stop()


@pytest.mark.parametrize("layout", ["libero", "droid", "aloha"])
def test_the_openpi_dicts_carry_openpis_keys_shapes_and_dtypes_and_map_back_to_the_same_slots(layout):
    """What the wire carries (openpi's example clients: 224x224 uint8, HWC; ALOHA CHW; DROID's
    state split joints + gripper), read back by the server's parser into the same slots."""
    num_cameras = {"aloha": 3}.get(layout, 2)
    state = np.arange(num_cameras * 3 + 2, dtype=np.float32)
    images = camera_images(num_cameras - 1) + [None]
    message = openpi_observation(layout, images, state, "pick up the fork")
    expected_keys = {"libero": {"observation/image", "observation/wrist_image", "observation/state", "prompt"},
                     "droid": {"observation/exterior_image_1_left", "observation/wrist_image_left",
                               "observation/joint_position", "observation/gripper_position", "prompt"},
                     "aloha": {"images", "state", "prompt"}}[layout]
    assert set(message) == expected_keys
    if layout == "aloha":
        assert set(message["images"]) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}
        assert all(img.shape == (3, 224, 224) and img.dtype == np.uint8 for img in message["images"].values())
    if layout == "droid":
        assert message["observation/joint_position"].tolist() == state[:-1].tolist()
        assert message["observation/gripper_position"].tolist() == [state[-1]]
    parsed = parse_request(message, num_cameras=num_cameras, state_dim=state.size, action_dim=2, horizon=4,
                           noise_dim=2)
    assert parsed.layout == layout and parsed.state.dtype == np.float64
    np.testing.assert_array_equal(parsed.state, state)
    assert all(img.shape == (224, 224, 3) and img.dtype == np.uint8 for img in parsed.images)
    assert parsed.images[0][100:120].std() > 0 and not parsed.images[-1].any()  # slot 0 a camera, the unused one black


def test_load_predictor_takes_the_layout_and_sizes_from_the_robot_config(demo_server, tmp_path):
    import yaml

    from ki_vla_ros.runtime.config import SOURCE_CONFIG_DIR

    document = yaml.safe_load((SOURCE_CONFIG_DIR / "single_arm.yaml").read_text())
    document["policy_node"]["ros__parameters"]["model"].update(remote=demo_server.uri, remote_layout="libero",
                                                               remote_timeout_s=30.0)
    path = tmp_path / "libero_remote.yaml"
    path.write_text(yaml.safe_dump(document))
    remote = load_predictor(load_robot_config(path))
    assert (remote.layout, remote.state_dim, remote.action_dim, remote.horizon) == ("libero", 8, 8, 10)
    remote.close()
