"""Preprocessing and normalization: the one path from sensor data to model input."""

import json

import numpy as np
import pytest
import torch

from ki_vla_ros.model.normalize import NormStats, load_norm_stats, normalize, save_norm_stats, unnormalize
from ki_vla_ros.model.preprocess import (
    check_image,
    check_state,
    clean_task_text,
    discretize_state,
    format_prompt,
    image_to_tensor,
    preprocess_image,
    resize_with_pad,
)


def white(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), 255, dtype=np.uint8)


def content_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding widths around the non-black content."""
    rows = np.flatnonzero(img.any(axis=(1, 2)))
    cols = np.flatnonzero(img.any(axis=(0, 2)))
    return rows[0], img.shape[0] - 1 - rows[-1], cols[0], img.shape[1] - 1 - cols[-1]


# ---------------------------------------------------------------- resize_with_pad
def test_wide_image_fills_the_width_and_is_padded_top_and_bottom_equally():
    out = resize_with_pad(white(480, 640), 224)  # 4:3 -> 224 x 168, 28 rows of black above and below
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert content_box(out) == (28, 28, 0, 0)
    assert (out[28:196] == 255).all()


def test_tall_image_fills_the_height_and_is_padded_left_and_right_equally():
    out = resize_with_pad(white(640, 480), 224)
    assert content_box(out) == (0, 0, 28, 28)


def test_odd_padding_puts_the_extra_pixel_at_the_bottom_like_openpi():
    out = resize_with_pad(white(100, 224), 224)  # content 100 rows, 124 to pad: 62 / 62
    assert content_box(out) == (62, 62, 0, 0)
    out = resize_with_pad(white(101, 224), 224)  # 123 to pad: 61 top, 62 bottom
    assert content_box(out) == (61, 62, 0, 0)


def test_small_image_is_upscaled_and_square_image_of_the_right_size_is_unchanged():
    assert content_box(resize_with_pad(white(56, 112), 224)) == (56, 56, 0, 0)
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_with_pad(img, 224), img)


def test_resize_keeps_the_picture_content_in_place():
    img = np.zeros((480, 640, 3), dtype=np.uint8)
    img[:, :320] = (255, 0, 0)  # left half red, right half blue: channels must not swap or move
    img[:, 320:] = (0, 0, 255)
    out = resize_with_pad(img, 224)
    assert tuple(out[112, 50]) == (255, 0, 0) and tuple(out[112, 170]) == (0, 0, 255)


def test_extreme_aspect_ratio_still_gives_at_least_one_row():
    out = resize_with_pad(white(1, 5000), 224)
    assert out.shape == (224, 224, 3) and out.any()


# ------------------------------------------------------------------ image tensor
def test_image_to_tensor_maps_uint8_to_minus_one_one_channels_first():
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[0, 0] = (0, 255, 51)
    t = image_to_tensor(img)
    assert t.dtype == torch.float32 and t.shape == (3, 2, 3)
    assert t[:, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 51 / 255 * 2 - 1])
    assert t.min() >= -1 and t.max() <= 1


def test_preprocess_image_gives_the_model_input_shape():
    t = preprocess_image(white(480, 640))
    assert t.shape == (3, 224, 224)
    assert t[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]  # padding is black = -1
    assert t[:, 112, 112].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "img, message",
    [
        (np.zeros((10, 10, 3), dtype=np.float32), "dtype float32; expected uint8"),
        (np.zeros((10, 10, 4), dtype=np.uint8), r"shape \(10, 10, 4\); expected HxWx3"),
        (np.zeros((10, 10), dtype=np.uint8), r"shape \(10, 10\)"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "is empty"),
        ([[0, 0, 0]], "is a list"),
    ],
)
def test_bad_images_raise_naming_the_problem(img, message):
    with pytest.raises(ValueError, match=message):
        resize_with_pad(img)
    with pytest.raises(ValueError, match="wrist"):
        check_image(img, name="camera 'wrist' image")


# ------------------------------------------------------------------------- state
def test_state_bins_at_the_edges_and_center():
    bins = discretize_state(np.array([-1.0, 1.0, 0.0, -0.99, 0.999, -5.0, 5.0]))
    assert bins.tolist() == [0, 255, 128, 1, 255, -1, 255]
    assert discretize_state(np.array([0.0]), num_bins=4).tolist() == [2]


def test_state_bins_match_openpi_below_minus_one_and_above_one():
    """openpi: np.digitize(x, linspace(-1, 1, 257)[:-1]) - 1, no clipping: below -1 is "-1", above 1 is 255."""
    step = 2 / 256
    x = np.array([-1 - 1e-9, -1.0, -1 + step - 1e-12, -1 + step, -step / 2, 0.0, 1 - step - 1e-12, 1 - step,
                  1 - 1e-12, 1.0, 1 + 1e-9, -2.5])
    assert discretize_state(x).tolist() == [-1, 0, 0, 1, 127, 128, 254, 255, 255, 255, 255, -1]
    assert format_prompt("stack", discretize_state(np.array([-1.2, 0.0, 1.3]))) == \
        "Task: stack, State: -1 128 255;\nAction: "


def test_bad_states_raise_naming_the_index():
    with pytest.raises(ValueError, match=r"state\[2\] is nan"):
        discretize_state(np.array([0.0, 0.1, np.nan]))
    with pytest.raises(ValueError, match=r"joint_states\[1\] is inf"):
        check_state(np.array([0.0, np.inf]), name="joint_states")
    with pytest.raises(ValueError, match="length 3; expected 7"):
        check_state(np.zeros(3), expected_dim=7)
    with pytest.raises(ValueError, match="expected a 1-D vector"):
        check_state(np.zeros((2, 3)))


# ------------------------------------------------------------------------ prompt
def test_prompt_is_exactly_the_pi05_format():
    assert (
        format_prompt(" pick_up the\ncup ", [0, 128, 255])
        == "Task: pick up the cup, State: 0 128 255;\nAction: "
    )
    assert clean_task_text("open_drawer\n") == "open drawer"


def test_prompt_rejects_non_integer_bins():
    with pytest.raises(ValueError, match="integer bins"):
        format_prompt("x", [0.5, 1.0])


# ------------------------------------------------------------------ normalization
def test_normalize_maps_quantiles_to_minus_one_and_one_and_unnormalize_inverts():
    x = np.random.default_rng(0).normal(loc=[0.0, 5.0, -3.0], scale=[1.0, 0.1, 10.0], size=(5000, 3))
    stats = NormStats.from_data(x)
    y = normalize(x, stats)
    np.testing.assert_allclose(np.quantile(y, [0.01, 0.99], axis=0), [[-1] * 3, [1] * 3], atol=1e-3)
    np.testing.assert_allclose(unnormalize(y, stats), x, rtol=1e-5, atol=1e-4)
    assert np.abs(normalize(x, stats, clip=True)).max() <= 1.0


def test_identity_stats_leave_normalized_values_unchanged():
    y = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(normalize(y, NormStats.identity(4)), y, atol=1e-5)


def test_normalize_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"shape \(10, 3\); norm stats have shape \(4,\)"):
        normalize(np.zeros((10, 3)), NormStats.identity(4))
    with pytest.raises(ValueError, match=r"shape \(5,\); norm stats have shape \(4,\)"):
        unnormalize(np.zeros(5), NormStats.identity(4))


def test_norm_stats_survive_a_json_round_trip(tmp_path):
    stats = {"state": NormStats.from_data(np.random.default_rng(1).normal(size=(100, 4))), "actions": NormStats.identity(2)}
    path = tmp_path / "norm_stats.json"
    save_norm_stats(path, stats)
    assert set(json.loads(path.read_text())["norm_stats"]) == {"state", "actions"}
    loaded = load_norm_stats(path, required=("state", "actions"))
    for key in stats:
        for field in ("q01", "q99", "mean", "std"):
            np.testing.assert_array_equal(getattr(loaded[key], field), getattr(stats[key], field))
            assert getattr(loaded[key], field).dtype == np.float32


def test_bad_norm_stats_files_name_the_file_and_key(tmp_path):
    path = tmp_path / "norm_stats.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="norm_stats.json is not valid JSON"):
        load_norm_stats(path)
    path.write_text(json.dumps({"norm_stats": {"state": {"q01": [0], "q99": [1], "mean": [0]}}}))
    with pytest.raises(ValueError, match=r"norm_stats.json key 'state' is missing key\(s\) \['std'\]"):
        load_norm_stats(path)
    path.write_text(json.dumps({"norm_stats": {"state": NormStats.identity(2).to_dict()}}))
    with pytest.raises(ValueError, match=r"has no key\(s\) \['actions'\]"):
        load_norm_stats(path, required=("state", "actions"))
    bad = NormStats.identity(2).to_dict() | {"q99": [1.0, 1.0, 1.0]}
    path.write_text(json.dumps({"actions": bad}))
    with pytest.raises(ValueError, match="key 'actions'.*different lengths"):
        load_norm_stats(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_norm_stats(tmp_path / "missing.json")


def test_to_delta_subtracts_each_chunk_start_state_and_to_absolute_adds_it_back():
    from ki_vla_ros.model.normalize import to_absolute, to_delta

    rng = np.random.default_rng(0)
    chunks, state = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 6))  # [E, T, H, Da], [E, T, Ds]
    delta = to_delta(chunks, state, (1, 4))
    np.testing.assert_allclose(delta[..., [0, 2, 3]], chunks[..., [0, 2, 3]], rtol=1e-6)
    np.testing.assert_allclose(delta[1, 2, :, 4], chunks[1, 2, :, 4] - state[1, 2, 4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_absolute(delta, state, (1, 4)), chunks, rtol=1e-5, atol=1e-6)
    one = to_delta(chunks[0, 0], state[0, 0], (1,))  # a single chunk [H, Da] and its state [Ds]
    np.testing.assert_allclose(one, delta[0, 0] * [1, 1, 1, 1, 0] + chunks[0, 0] * [0, 0, 0, 0, 1], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(to_delta(chunks, state, ()), chunks.astype(np.float32))
