"""Every shipped robot config runs through the tiny model with its default instruction and
the longest possible state text (every joint at a limit). The π0.5 prompt carries the
discretized state as text, so a robot with many joints makes long prompts: 17 dims once
overflowed the tiny preset's max_token_len and made the mobile robot hold."""
import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.model_loading import load_predictor


@pytest.mark.parametrize("name", ["single_arm", "bimanual", "mobile"])
@pytest.mark.parametrize("at", ["lower", "upper"])
def test_default_instruction_and_a_state_at_the_limits_fit_the_tiny_model(name, at):
    import torch

    torch.set_num_threads(1)
    config = load_robot_config(name)
    predictor = load_predictor(config, "tiny")
    state = np.array([getattr(config.joint_limits[j], at) for j in config.joints]
                     + [0.0] * (config.state_dim - len(config.joints)), np.float32)
    images = [np.zeros((48, 64, 3), np.uint8)] * config.num_image_slots
    images += [None] * (predictor.num_cameras - len(images))
    chunk = predictor.predict_chunk(images, state, config.default_instruction)
    assert chunk.shape == (predictor.horizon, config.action_dim)
    assert np.isfinite(chunk).all()
