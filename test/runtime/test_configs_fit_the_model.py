"""Every shipped robot config runs through the model it loads (single_arm: the shipped demo
checkpoint; the others: the tiny preset) with its default instruction and the longest possible state text (every joint at a limit). The π0.5 prompt carries the
discretized state as text, so a robot with many joints makes long prompts: 17 dims once
overflowed the tiny preset's max_token_len and made the mobile robot hold."""
import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.model_loading import load_predictor


@pytest.mark.parametrize("name", ["single_arm", "bimanual", "mobile"])
@pytest.mark.parametrize("at", ["lower", "upper"])
def test_default_instruction_and_a_state_at_the_limits_fit_the_configured_model(name, at):
    import torch

    torch.set_num_threads(1)
    config = load_robot_config(name)
    predictor = load_predictor(config)  # the config's model.checkpoint
    state = np.array([getattr(config.joint_limits[j], at) for j in config.joints]
                     + [0.0] * (config.state_dim - len(config.joints)), np.float32)
    images = [np.zeros((48, 64, 3), np.uint8)] * config.num_image_slots
    images += [None] * (predictor.num_cameras - len(images))
    chunk = predictor.predict_chunk(images, state, config.default_instruction)
    assert chunk.shape == (predictor.horizon, config.action_dim)
    assert np.isfinite(chunk).all()


def test_the_demo_keyword_loads_the_shipped_checkpoint_and_a_missing_directory_is_named(tmp_path):
    from ki_vla_ros.runtime.model_loading import DEMO_CHECKPOINT_DIR

    config = load_robot_config("single_arm")
    assert config.model.checkpoint == "demo"
    predictor = load_predictor(config, "demo")
    assert predictor.model.config.name == "tiny_study" and (DEMO_CHECKPOINT_DIR / "model.safetensors").is_file()
    missing = tmp_path / "nothing_here"
    with pytest.raises(FileNotFoundError, match=f"'{missing}'.*expected a directory written by save_pretrained, "
                                                "'demo' or 'tiny'"):
        load_predictor(config, str(missing))


def test_bimanual_uses_openpis_aloha_image_slots_so_a_released_pi05_fits(tmp_path):
    """π0.5 has 3 image slots (openpi's ALOHA mapping: cam_high, cam_left_wrist, cam_right_wrist);
    a 4th slot for cam_low would make the policy reject every released checkpoint."""
    import yaml

    from ki_vla_ros.model.config import KIVLAConfig
    from ki_vla_ros.model.inference import Predictor
    from ki_vla_ros.runtime.config import SOURCE_CONFIG_DIR
    from ki_vla_ros.runtime.policy import Policy, PolicyError

    config = load_robot_config("bimanual")
    assert [(c.name, c.slot) for c in config.cameras] == [("cam_high", 0), ("cam_left_wrist", 1),
                                                          ("cam_right_wrist", 2)]
    released_slots = KIVLAConfig.preset("pi05").num_cameras
    predictor = Predictor.tiny_random(state_dim=14, action_dim=14, num_cameras=released_slots)
    Policy(predictor, config)  # accepted

    document = yaml.safe_load((SOURCE_CONFIG_DIR / "bimanual.yaml").read_text())
    document["/**"]["ros__parameters"]["cameras"]["cam_low"] = {
        "topic": "/cam_low/image_raw", "message_type": "raw", "slot": 3}
    (tmp_path / "four.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(PolicyError, match="3 image slots, the config uses 4"):
        Policy(predictor, load_robot_config(tmp_path / "four.yaml"))
