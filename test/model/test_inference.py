"""Predictor: numpy camera images + joint state + task -> action chunk in robot units."""

import threading

import numpy as np
import pytest
import torch

from ki_vla_ros.model.inference import Predictor, prepare_inputs
from ki_vla_ros.model.normalize import NormStats, unnormalize

torch.set_num_threads(1)

STATE_DIM, ACTION_DIM, CAMERAS = 7, 6, 2


@pytest.fixture(scope="module")
def predictor():
    return Predictor.tiny_random(state_dim=STATE_DIM, action_dim=ACTION_DIM, num_cameras=CAMERAS, seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)]


def noise_for(p, seed=0):
    return np.random.default_rng(seed).standard_normal((p.horizon, p.action_dim)).astype(np.float32)


def test_predict_chunk_returns_one_float32_chunk_in_robot_units(predictor, images):
    assert (predictor.num_cameras, predictor.state_dim, predictor.action_dim) == (CAMERAS, STATE_DIM, ACTION_DIM)
    chunk = predictor.predict_chunk(images, np.zeros(STATE_DIM), "pick up the cup")
    assert chunk.shape == (predictor.horizon, ACTION_DIM) and chunk.dtype == np.float32
    assert np.isfinite(chunk).all()
    assert predictor.device == "cpu"


def test_same_noise_gives_the_same_chunk_and_other_noise_another(predictor, images):
    state = np.linspace(-0.5, 0.5, STATE_DIM)
    a = predictor.predict_chunk(images, state, "pick up the cup", noise=noise_for(predictor, 0))
    b = predictor.predict_chunk(images, state, "pick up the cup", noise=noise_for(predictor, 0))
    c = predictor.predict_chunk(images, state, "pick up the cup", noise=noise_for(predictor, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_chunk_is_the_model_output_unnormalized_with_the_action_stats(images):
    p = Predictor.tiny_random(state_dim=STATE_DIM, action_dim=ACTION_DIM, num_cameras=CAMERAS, seed=1)
    stats = NormStats(q01=np.arange(ACTION_DIM) - 5.0, q99=np.arange(ACTION_DIM) + 5.0,
                      mean=np.zeros(ACTION_DIM), std=np.ones(ACTION_DIM))
    p.action_stats = stats
    state, noise = np.full(STATE_DIM, 0.25), noise_for(p)
    chunk = p.predict_chunk(images, state, "stack the blocks", noise=noise)

    inputs = prepare_inputs(images, state, "stack the blocks", config=p.config, text_tokenizer=p.model.text_tokenizer,
                            state_stats=p.state_stats)
    full_noise = torch.zeros(1, p.horizon, p.config.action_dim)
    full_noise[0, :, :ACTION_DIM] = torch.from_numpy(noise)
    normalized = p.model.sample_actions(inputs, noise=full_noise)[0, :, :ACTION_DIM].numpy()
    np.testing.assert_allclose(chunk, unnormalize(normalized, stats), rtol=1e-6, atol=1e-6)


def test_delta_action_dims_come_back_as_offsets_from_the_measured_state(images):
    """config.delta_action_dims: those dims of the un-normalized model output are offsets from
    the state the chunk was predicted from (openpi's DeltaActions); the others are absolute."""
    import dataclasses

    base = Predictor.tiny_random(state_dim=STATE_DIM, action_dim=ACTION_DIM, num_cameras=CAMERAS, seed=1)
    model = base.model
    model.config = dataclasses.replace(model.config, delta_action_dims=(0, 2, 3))
    p = Predictor(model)
    state, noise = np.linspace(-1.0, 1.0, STATE_DIM), noise_for(p)
    chunk = p.predict_chunk(images, state, "stack the blocks", noise=noise)
    model.config = dataclasses.replace(model.config, delta_action_dims=())
    absolute = Predictor(model).predict_chunk(images, state, "stack the blocks", noise=noise)
    offset = np.zeros(ACTION_DIM, np.float32)
    offset[[0, 2, 3]] = state[[0, 2, 3]]
    np.testing.assert_allclose(chunk, absolute + offset, rtol=1e-6, atol=1e-6)
    model.config = dataclasses.replace(model.config, delta_action_dims=(0, 5))
    model.norm_stats = {"state": NormStats.identity(5), "actions": model.norm_stats["actions"]}
    with pytest.raises(ValueError, match=r"delta_action_dims \[0, 5\] pair action dims with state dims, but the "
                                         r"state has 5 dims"):
        Predictor(model)


def test_images_of_any_size_and_missing_cameras_are_accepted(predictor, images):
    small = np.full((17, 31, 3), 200, np.uint8)
    for cams in ([small, images[0]], [None, images[1]], [images[0], None]):
        assert np.isfinite(predictor.predict_chunk(cams, np.zeros(STATE_DIM), "wipe the table")).all()


@pytest.mark.parametrize("images_arg, state, match", [
    ("ok", np.zeros(STATE_DIM + 1), "state has length 8; expected 7"),
    ("ok", np.array([0, 0, np.nan, 0, 0, 0, 0]), r"state\[2\] is nan"),
    ("ok", np.array([0, 0, 0, np.inf, 0, 0, 0]), r"state\[3\] is inf"),
    ("float", np.zeros(STATE_DIM), r"images\[0\] has dtype float32; expected uint8"),
    ("gray", np.zeros(STATE_DIM), r"images\[1\] has shape \(48, 64\); expected HxWx3"),
    ("one", np.zeros(STATE_DIM), "images has 1 entries; expected num_cameras=2"),
    ("none", np.zeros(STATE_DIM), "all 2 images are None"),
])
def test_invalid_observations_raise_value_errors_naming_the_input(predictor, images, images_arg, state, match):
    cams = {"ok": images,
            "float": [images[0].astype(np.float32), images[1]],
            "gray": [images[0], np.zeros((48, 64), np.uint8)],
            "one": images[:1],
            "none": [None, None]}[images_arg]
    with pytest.raises(ValueError, match=match):
        predictor.predict_chunk(cams, state, "pick up the cup")


def test_too_long_prompt_and_bad_noise_are_refused(predictor, images):
    with pytest.raises(ValueError, match="max_token_len"):
        predictor.predict_chunk(images, np.zeros(STATE_DIM), "go " * 100)
    with pytest.raises(ValueError, match="noise has shape"):
        predictor.predict_chunk(images, np.zeros(STATE_DIM), "pick", noise=np.zeros((3, 3)))


def test_generate_subtask_returns_text(predictor, images):
    text = predictor.generate_subtask(images, "tidy up the kitchen", max_new_tokens=4)
    assert isinstance(text, str)


def test_saved_tiny_model_loads_as_predictor_with_the_same_actions(predictor, images, tmp_path):
    predictor.model.save_pretrained(tmp_path)
    loaded = Predictor.from_pretrained(str(tmp_path), device="auto", dtype="auto")
    state, noise = np.zeros(STATE_DIM), noise_for(predictor)
    np.testing.assert_array_equal(loaded.predict_chunk(images, state, "pick", noise=noise),
                                  predictor.predict_chunk(images, state, "pick", noise=noise))
    half = Predictor.from_pretrained(str(tmp_path), device="cpu", dtype="bfloat16")
    assert np.isfinite(half.predict_chunk(images, state, "pick", noise=noise)).all()
    with pytest.raises(ValueError, match="dtype is 'fp8'"):
        Predictor.from_pretrained(str(tmp_path), dtype="fp8")


def test_checkpoint_without_norm_stats_cannot_make_a_predictor(tmp_path):
    from ki_vla_ros.model.config import KIVLAConfig
    from ki_vla_ros.model.network import KIVLA

    KIVLA(KIVLAConfig.preset("tiny")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="norm stats"):
        Predictor.from_pretrained(str(tmp_path))


def test_concurrent_calls_give_the_same_results_as_sequential_ones(predictor, images):
    state, noise = np.zeros(STATE_DIM), noise_for(predictor, 3)
    expected = predictor.predict_chunk(images, state, "pick", noise=noise)
    results = [None] * 4

    def call(i):
        results[i] = predictor.predict_chunk(images, state, "pick", noise=noise)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_warmup_runs(predictor):
    predictor.warmup()
