"""Real-time chunking in the sampler (model/rtc.py): without a previous chunk the sampler is
today's, bit for bit; with one, the frozen steps are the previous chunk's and the overlap is
pulled toward it by the paper's soft mask."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.inference import Predictor
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.model.rtc import ChunkGuidance, rtc_prefix_weights
from ki_vla_ros.model.sampler import ChunkSampler

torch.set_num_threads(1)


def small_model() -> KIVLA:
    config = dataclasses.replace(KIVLAConfig.preset("tiny"), depth=1, expert_depth=1, vision_depth=1, max_token_len=64)
    torch.manual_seed(0)
    return KIVLA(config).eval()


def todays_sampler(model: KIVLA, inputs, noise: torch.Tensor) -> torch.Tensor:
    """The KV-cached Euler loop as it was before RTC, written out."""
    n, b, h = model.config.num_flow_steps, noise.shape[0], model.config.action_horizon
    kv, pad = model._prefix_kv(inputs)
    context = model._expert_context(pad, h)
    x, dt = noise.clone(), -1.0 / n
    for step in range(n):
        x = x + dt * model._run_expert(x, torch.full((b,), 1.0 + step * dt), kv, context)
    return x


def test_without_a_previous_chunk_the_sampler_is_todays_bit_for_bit():
    model = small_model()
    batch = model.example_batch(2)
    noise = torch.randn(2, model.config.action_horizon, model.config.action_dim)
    with torch.no_grad():
        expected = todays_sampler(model, batch, noise)
    assert torch.equal(model.sample_actions(batch, noise=noise), expected)
    assert torch.equal(model.sample_actions(batch, noise=noise, guidance=None), expected)


def test_guidance_with_an_empty_overlap_changes_nothing_bit_for_bit():
    model = small_model()
    batch = model.example_batch(2)
    c = model.config
    noise = torch.randn(2, c.action_horizon, c.action_dim)
    nothing = ChunkGuidance(torch.randn(2, c.action_horizon, c.action_dim), delay_steps=0, overlap_steps=0)
    assert torch.equal(model.sample_actions(batch, noise=noise, guidance=nothing),
                       model.sample_actions(batch, noise=noise))


def test_prefix_weights_are_one_for_the_delay_then_decay_exponentially_to_zero_after_the_overlap():
    w = rtc_prefix_weights(delay_steps=2, overlap_steps=6, horizon=10)
    c = torch.tensor([4, 3, 2, 1], dtype=torch.float64) / 5  # (K - k) / (K - d + 1), k = 2..5
    expected = torch.cat([torch.ones(2), (c * torch.expm1(c) / (math.e - 1)).float(), torch.zeros(4)])
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-7)
    assert torch.all(w[2:6] < 1) and torch.all(w[2:6] > 0) and torch.all(torch.diff(w[2:6]) < 0)
    assert torch.equal(rtc_prefix_weights(8, 5, 10), torch.cat([torch.ones(5), torch.zeros(5)]))  # d beyond K
    with pytest.raises(ValueError, match="delay_steps -1"):
        rtc_prefix_weights(-1, 5, 10)


def test_guided_chunk_keeps_the_frozen_steps_and_is_pulled_toward_the_previous_chunk_over_the_overlap():
    model = small_model()
    batch = model.example_batch(1)
    c = model.config
    noise = torch.randn(1, c.action_horizon, c.action_dim)
    free = model.sample_actions(batch, noise=noise)
    previous = free + 0.5  # a running chunk the model would not have sampled from this noise
    guided = model.sample_actions(batch, noise=noise,
                                  guidance=ChunkGuidance(previous, delay_steps=3, overlap_steps=8))
    assert torch.equal(guided[:, :3], previous[:, :3])
    gap_free = (free - previous)[:, 3:6].abs().mean()
    gap_guided = (guided - previous)[:, 3:6].abs().mean()
    assert gap_guided < 0.5 * gap_free, (float(gap_guided), float(gap_free))
    # The static-shape sampler runs the same guided steps (prompt padding: rounding only).
    sampled = ChunkSampler(model)(batch, noise, guidance=ChunkGuidance(previous, 3, 8))
    torch.testing.assert_close(sampled, guided, rtol=0, atol=1e-5)


def test_guidance_of_the_wrong_shape_is_refused_by_name():
    model = small_model()
    batch = model.example_batch(1)
    with pytest.raises(ValueError, match=r"previous_chunk has shape \(1, 3, 32\); expected \[B, H, D\]"):
        model.sample_actions(batch, guidance=ChunkGuidance(torch.zeros(1, 3, 32), 1, 3))


def test_predictor_takes_the_running_chunk_in_robot_units_and_returns_its_frozen_steps():
    predictor = Predictor.tiny_random(state_dim=3, action_dim=3, num_cameras=1)
    images = [np.full((48, 64, 3), 90, np.uint8)]
    state = np.array([0.1, -0.2, 0.3])
    noise = np.random.default_rng(0).standard_normal((predictor.horizon, predictor.config.action_dim))
    running = predictor.predict_chunk(images, state, "pick", noise=noise)[2:] + 0.2  # the old plan, shifted
    chunk = predictor.predict_chunk(images, state, "pick", noise=noise, previous_actions=running,
                                    inference_delay_steps=2)
    np.testing.assert_allclose(chunk[:2], running[:2], atol=1e-5)
    with pytest.raises(ValueError, match=r"previous_actions has shape \(4, 2\); expected \[K, 3\]"):
        predictor.predict_chunk(images, state, "pick", previous_actions=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="inference_delay_steps is -1"):
        predictor.predict_chunk(images, state, "pick", previous_actions=running, inference_delay_steps=-1)
