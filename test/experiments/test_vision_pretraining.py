"""Dense pretraining of the vision tower on patch colour labels (the SigLIP stand-in)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim.render import TABLE_RGB
from ki_vla_ros.sim.scene import BLOCK_COLORS_RGB
from experiments.study import study_model_config
from experiments.tasks import EVAL_SEED_OFFSET, generate_reach_data
from experiments.vision_pretraining import (WHERE_WEIGHT, frames, patch_color_labels, patch_targets,
                                            pretrain_vision_tower)

SINGLE_ARM = load_robot_config("single_arm")
COLORS = list(BLOCK_COLORS_RGB)


def test_a_patch_is_labelled_with_the_block_colours_its_pixels_show():
    image = np.empty((1, 16, 16, 3), np.uint8)
    image[:] = TABLE_RGB
    image[0, 9:11, 1:3] = BLOCK_COLORS_RGB["red"]  # patch row 1, column 0 -> token 2
    image[0, 7, 15] = BLOCK_COLORS_RGB["blue"]  # one pixel in patch row 0, column 1 -> token 1
    labels = patch_color_labels(image, patch_size=8)
    assert labels.shape == (1, 4, len(COLORS))
    expected = torch.zeros(1, 4, len(COLORS))
    expected[0, 2, COLORS.index("red")] = 1
    expected[0, 1, COLORS.index("blue")] = 1
    assert torch.equal(labels, expected)


def test_a_patch_target_says_where_its_colour_is_in_image_coordinates():
    image = np.empty((1, 16, 16, 3), np.uint8)
    image[:] = TABLE_RGB
    image[0, 9:11, 1:3] = BLOCK_COLORS_RGB["red"]  # pixel centres x 1.5-2.5, y 9.5-10.5 of 16
    image[0, 12, 12] = (np.array(BLOCK_COLORS_RGB["green"]) * 0.8 + np.array(TABLE_RGB) * 0.2).astype(np.uint8)
    image[0, 12, 13] = BLOCK_COLORS_RGB["green"]  # a full pixel beside an anti-aliased one
    labels, where = patch_targets(image, patch_size=8)
    red, green = COLORS.index("red"), COLORS.index("green")
    torch.testing.assert_close(where[0, 2, red], torch.tensor([2.0 / 16 * 2 - 1, 10.0 / 16 * 2 - 1]))
    # The centroid leans to the full pixel: between x 12.5 and 13.5, nearer 13.5.
    x = (where[0, 3, green, 0].item() + 1) / 2 * 16
    assert 13.0 < x < 13.5 and labels[0, 3, green] == 1
    assert torch.count_nonzero(where[labels == 0]) == 0  # absent colours have no position


@pytest.mark.parametrize("image, match", [
    (np.zeros((1, 16, 16, 3), np.float32), "dtype float32"),
    (np.zeros((1, 16, 12, 3), np.uint8), "16x12 px; expected multiples of patch_size=8"),
    (np.zeros((16, 16, 3), np.uint8), r"shape \(16, 16, 3\)"),
])
def test_bad_images_are_rejected_with_what_was_expected(image, match):
    with pytest.raises(ValueError, match=match):
        patch_color_labels(image, patch_size=8)


@pytest.fixture(scope="module")
def frames_300_and_40_held_out():
    """The study model's config, frames of 300 training scenes and of 40 held-out ones."""
    config = study_model_config(SINGLE_ARM.action_dim, SINGLE_ARM.num_image_slots)
    train = frames(generate_reach_data(SINGLE_ARM, range(300), config.image_size, steps=1))
    held_out = frames(generate_reach_data(SINGLE_ARM, range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 40),
                                          config.image_size, steps=1))
    return config, train, held_out


def test_pretraining_teaches_held_out_patches_their_colours(frames_300_and_40_held_out):
    config, train, held_out = frames_300_and_40_held_out
    torch.manual_seed(0)
    model = KIVLA(config)
    other = {n: p.detach().clone() for n, p in model.named_parameters() if ".vision_tower." not in f".{n}"}
    result = pretrain_vision_tower(model, train, steps=300, held_out=held_out)
    losses = result["losses"]
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:20])
    # Most patches show no block, so "no colour anywhere" is already right for ~85 % of them.
    assert result["held_out_after"]["accuracy"] > 0.93 > result["held_out_before"]["accuracy"]
    assert all(torch.equal(p, other[n]) for n, p in model.named_parameters() if n in other)


def test_pretraining_with_positions_teaches_held_out_patches_where_their_colour_is(frames_300_and_40_held_out):
    config, train, held_out = frames_300_and_40_held_out
    torch.manual_seed(0)
    result = pretrain_vision_tower(KIVLA(config), train, steps=600, held_out=held_out, where_weight=WHERE_WEIGHT)
    before, after = result["held_out_before"], result["held_out_after"]
    # The centre of an 8 px patch is ~3 px from a point in it on average: the tokens say more.
    assert after["where_error_px"] < 2.0 < before["where_error_px"]
    # Colours are learned too, beyond answering "none" everywhere (they take longer here:
    # 0.98 after 1500 steps on 4000 frames).
    none_shown = (patch_color_labels(held_out, config.patch_size).sum(-1) == 0).float().mean().item()
    assert after["accuracy"] > none_shown + 0.02 and after["accuracy"] > before["accuracy"]


def test_the_study_pretrains_the_tower_then_keeps_it_frozen():
    """pretrain_backbone with vision_lr_scale=0: the tower leaves VLM pretraining exactly as
    the patch-colour stage left it, while the language model moves."""
    import dataclasses

    from experiments.demo_checkpoint import DEMO_SIZE
    from experiments.study import new_model, prepare_data, pretrain_backbone

    size = dataclasses.replace(DEMO_SIZE, train_episodes=4, eval_episodes=1, pretrain_steps=3,
                               point_pretrain_steps=2, vision_pretrain_steps=5, vision_lr_scale=0.0)
    data = prepare_data("single_arm", size)
    model, _ = pretrain_backbone(data, size, seed=0)
    reference = new_model(data, seed=0)
    initial_lm = {n: p.detach().clone() for n, p in reference.backbone.model.language_model.named_parameters()}
    pretrain_vision_tower(reference, frames(data.train), steps=5, seed=0, where_weight=size.where_weight)
    for (name, got), want in zip(model.backbone.model.vision_tower.state_dict().items(),
                                 reference.backbone.model.vision_tower.state_dict().values()):
        assert torch.equal(got, want), name
    assert any(not torch.equal(p, initial_lm[n]) for n, p in model.backbone.model.language_model.named_parameters())


@pytest.mark.parametrize("field, value, match", [
    ("vision_lr_scale", -0.5, "vision_lr_scale=-0.5: expected a fraction >= 0"),
    ("vision_lr_scale", float("nan"), "vision_lr_scale=nan: expected a fraction >= 0"),
    ("vision_pretrain_steps", -1, r"vision_pretrain_steps=-1: expected >= 0"),
    ("point_pretrain_steps", -2, r"point_pretrain_steps=-2: expected >= 0"),
    ("where_weight", -1.0, r"where_weight=-1.0: expected >= 0"),
    ("text_tokenizer", "words", r"text_tokenizer='words': expected one of \('byte', 'sentencepiece'\)"),
])
def test_a_bad_vision_setting_is_rejected_before_any_data_is_made(field, value, match):
    import dataclasses

    from experiments.demo_checkpoint import DEMO_SIZE

    with pytest.raises(ValueError, match=match):
        dataclasses.replace(DEMO_SIZE, **{field: value})
