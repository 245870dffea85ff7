"""The fast inference paths give the eager model's actions: static-shape sampler, torch.compile,
device-side image preprocessing; the GPU-only options are refused on the CPU by name."""

import dataclasses

import numpy as np
import pytest
import torch

from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.inference import Predictor, prepare_images
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.model.preprocess import preprocess_image, preprocess_image_torch
from ki_vla_ros.model.sampler import ChunkSampler

# fp32 on the CPU: compiled kernels reorder sums, nothing else; seen: 2.4e-7.
COMPILED_ATOL = 1e-5


def small_model(**overrides) -> KIVLA:
    """The tiny preset cut to one layer everywhere: keeps torch.compile's CPU build short."""
    config = dataclasses.replace(KIVLAConfig.preset("tiny"), depth=1, expert_depth=1, vision_depth=1,
                                 max_token_len=64, **overrides)
    torch.manual_seed(0)
    return KIVLA(config).eval()


def test_the_static_shape_sampler_pads_the_prompt_and_gives_the_same_actions():
    model = small_model()
    batch = model.example_batch(3)  # sample 1 has a missing camera
    noise = torch.randn(3, model.config.action_horizon, model.config.action_dim)
    sampler = ChunkSampler(model)
    padded = sampler.pad_prompt(batch)
    assert padded.tokens.shape == (3, 64) and not padded.token_masks[:, batch.tokens.shape[1]:].any()
    torch.testing.assert_close(sampler(batch, noise), model.sample_actions(batch, noise=noise), rtol=0, atol=1e-6)
    too_long = dataclasses.replace(batch, tokens=torch.zeros(3, 65, dtype=torch.long),
                                   token_masks=torch.ones(3, 65, dtype=torch.bool))
    with pytest.raises(ValueError, match="prompt is 65 tokens; the sampler pads to prompt_len=64"):
        sampler(too_long, noise)


def test_compiled_prefix_pass_and_expert_step_match_eager_in_fp32():
    model = small_model()
    batch = model.example_batch(2)
    noise = torch.randn(2, model.config.action_horizon, model.config.action_dim)
    eager = model.sample_actions(batch, noise=noise)
    compiled = ChunkSampler(model, compile="default")
    first = compiled(batch, noise)
    torch.testing.assert_close(first, eager, rtol=0, atol=COMPILED_ATOL)
    other = torch.randn_like(noise)  # same shapes, new values: no recompile, still the eager result
    torch.testing.assert_close(compiled(batch, other), model.sample_actions(batch, noise=other),
                               rtol=0, atol=COMPILED_ATOL)


def test_gpu_only_options_are_refused_on_the_cpu_by_name():
    model = small_model()
    with pytest.raises(ValueError, match="cuda_graph is true but the model is on cpu"):
        ChunkSampler(model, cuda_graph=True)
    with pytest.raises(ValueError, match=r"compile is 'fast'; expected one of \['off', 'default', 'max-autotune'\]"):
        ChunkSampler(model, compile="fast")
    with pytest.raises(ValueError, match="cuda_graph is true but the model is on cpu"):
        Predictor.tiny_random(state_dim=4, action_dim=4, num_cameras=1, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph is true but device is 'cpu'"):
        Predictor.from_pretrained("unused", device="cpu", cuda_graph=True)


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Gradients plus a noisy patch: smooth regions and sharp edges."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1).astype(np.uint8)
    img[h // 4: h // 2, w // 3: w // 2] = np.random.default_rng(seed).integers(0, 256, (h // 2 - h // 4,
                                                                                       w // 2 - w // 3, 3))
    return img


@pytest.mark.parametrize("h, w", [(480, 640), (100, 60), (17, 33), (224, 224), (1000, 37)])
def test_torch_resize_with_pad_equals_the_opencv_path_within_one_level(h, w):
    img = scene(h, w)
    cpu = preprocess_image(img, 224)
    torch_path = preprocess_image_torch(torch.from_numpy(img), 224)
    assert torch_path.shape == (3, 224, 224) and torch_path.dtype == torch.float32
    assert float((cpu - torch_path).abs().max()) <= 2 / 255 + 1e-6  # one uint8 level in [-1, 1] units
    assert float((cpu - torch_path).abs().mean()) < 1e-3


def test_prepare_images_on_a_device_gives_the_cpu_inputs_and_masks():
    images = [scene(480, 640), None, scene(96, 96, seed=1)]
    cpu_pixels, cpu_masks = prepare_images(images, 3, 32)
    dev_pixels, dev_masks = prepare_images(images, 3, 32, device="cpu")  # the torch path, here on the CPU
    assert torch.equal(cpu_masks, dev_masks) and cpu_masks.tolist() == [[True, False, True]]
    torch.testing.assert_close(dev_pixels, cpu_pixels, rtol=0, atol=2 / 255 + 1e-6)
    with pytest.raises(ValueError, match=r"expected HxWx3 uint8"):
        preprocess_image_torch(torch.zeros(4, 4, 3), 8)


def test_repeated_kv_heads_attend_like_grouped_query_attention():
    """The CUDA path of the attention (K/V heads repeated, no enable_gqa) computes the same as GQA."""
    import torch.nn.functional as F

    from ki_vla_ros.model.network import repeat_kv_heads

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 5, 16, generator=g)
    k, v = (torch.randn(2, 2, 7, 16, generator=g) for _ in range(2))
    bias = torch.where(torch.rand(2, 1, 5, 7, generator=g) > 0.3, 0.0, -1e9)
    grouped = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
    repeated = F.scaled_dot_product_attention(q, repeat_kv_heads(k, 8), repeat_kv_heads(v, 8), attn_mask=bias)
    torch.testing.assert_close(repeated, grouped, rtol=0, atol=1e-6)
