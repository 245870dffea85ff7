"""KIVLA network: attention structure, knowledge insulation, KV cache, learning, sizes."""

import dataclasses
import json

import pytest
import torch

from ki_vla_ros.model.attention import make_attn_mask
from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.network import KIVLA, count_parameters, sample_time

torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine: threads only add contention


def tiny_model(seed: int = 0, **overrides) -> KIVLA:
    torch.manual_seed(seed)
    return KIVLA(KIVLAConfig.preset("tiny", **overrides))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def batch(model):
    return model.example_batch(batch_size=3, seed=0)


def with_noise(batch, seed: int):
    g = torch.Generator().manual_seed(seed)
    b, h, d = batch.actions.shape
    return dataclasses.replace(batch, noise=torch.randn(b, h, d, generator=g),
                               time=torch.rand(b, generator=g) * 0.999 + 0.001)


def grads(module):
    return {n: p.grad for n, p in module.named_parameters()}


def nonzero(g):
    return g is not None and bool(g.abs().sum() > 0)


# ------------------------------------------------------------------------------ masks
def test_attention_mask_is_prefix_lm_for_a_bidirectional_prefix_then_causal_tokens():
    pad = torch.ones(1, 6, dtype=torch.bool)
    mask = make_attn_mask(pad, torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.bool))[0].int()
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0]] * 3 + [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]


def test_attention_mask_block_sees_prefix_but_prefix_does_not_see_block():
    pad = torch.ones(1, 6, dtype=torch.bool)
    mask = make_attn_mask(pad, torch.tensor([0, 0, 0, 1, 0, 0], dtype=torch.bool))[0].int()
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0]] * 3 + [[1] * 6] * 3


def test_attention_mask_hides_padding_from_every_token():
    pad = torch.tensor([[1, 1, 0, 1, 1, 0]], dtype=torch.bool)
    mask = make_attn_mask(pad, torch.tensor([1, 1, 1, 1, 1, 1], dtype=torch.bool))[0]
    assert not mask[:, 2].any() and not mask[:, 5].any()
    assert mask[4].tolist() == [True, True, False, True, True, False]


# ------------------------------------------------------------------------ insulation
def test_ki_flow_loss_gives_backbone_no_gradient_and_ce_gives_expert_none(batch):
    m = tiny_model()
    out = m.compute_loss(batch, recipe="ki")
    out["flow"].backward(retain_graph=True)
    assert not any(nonzero(g) for g in grads(m.backbone).values())
    assert any(nonzero(g) for g in grads(m.action_expert).values())

    m.zero_grad(set_to_none=True)
    out["ce"].backward()
    assert not any(nonzero(g) for g in grads(m.action_expert).values())
    assert nonzero(m.backbone.model.language_model.layers[0].self_attn.k_proj.weight.grad)


@pytest.mark.parametrize("recipe", ["joint", "pi0"])
def test_flow_loss_reaches_backbone_without_insulation(batch, recipe):
    m = tiny_model()
    m.compute_loss(batch, recipe=recipe)["flow"].backward()
    assert nonzero(m.backbone.model.language_model.layers[0].self_attn.k_proj.weight.grad)
    assert nonzero(m.backbone.model.vision_tower.embeddings.patch_embedding.weight.grad)


def test_recipes_report_only_their_losses(model, batch):
    pi0 = model.compute_loss(batch, recipe="pi0")
    fast = model.compute_loss(batch, recipe="fast")
    ki = model.compute_loss(with_noise(batch, 1), recipe="ki")
    assert pi0["ce"] == 0 and pi0["flow"] > 0 and torch.equal(pi0["total"], pi0["flow"])
    assert fast["flow"] == 0 and fast["ce"] > 0 and torch.equal(fast["total"], fast["ce"])
    torch.testing.assert_close(ki["total"], ki["ce"] + model.config.flow_loss_weight * ki["flow"])
    with pytest.raises(ValueError, match="recipe"):
        model.compute_loss(batch, recipe="pi1")


def test_vlm_samples_without_actions_add_no_flow_loss(model, batch):
    batch = with_noise(batch, 2)
    assert not batch.has_actions[-1]
    junk = batch.actions.clone()
    junk[-1] = 100.0  # a VLM sample's "actions" must not matter
    a = model.compute_loss(batch, recipe="ki")["flow"]
    b = model.compute_loss(dataclasses.replace(batch, actions=junk), recipe="ki")["flow"]
    assert torch.equal(a, b)


# ---------------------------------------------------------------------- invariances
def test_expert_inputs_leave_backbone_logits_bit_identical(model, batch):
    a = model.compute_loss(with_noise(batch, 1), recipe="joint")
    b = model.compute_loss(with_noise(batch, 2), recipe="joint")
    assert not torch.equal(a["velocity"], b["velocity"])
    assert torch.equal(a["logits"], b["logits"])


def test_fast_tokens_leave_expert_output_unchanged(model, batch):
    batch = with_noise(batch, 3)
    other = batch.target_tokens.clone()
    other[:, :5] = (other[:, :5] + 7) % model.config.vocab_size
    a = model.compute_loss(batch, recipe="joint")
    b = model.compute_loss(dataclasses.replace(batch, target_tokens=other), recipe="joint")
    assert not torch.equal(a["logits"], b["logits"])
    assert torch.equal(a["velocity"], b["velocity"])


def test_padded_prompt_tokens_and_masked_cameras_do_not_change_results(model, batch):
    noise = torch.randn(3, model.config.action_horizon, model.config.action_dim)
    assert not batch.image_masks[1, -1] and not batch.token_masks.all()
    changed = dataclasses.replace(
        batch,
        tokens=torch.where(batch.token_masks, batch.tokens, torch.full_like(batch.tokens, 77)),
        images=batch.images.clone().index_put_((torch.tensor([1]), torch.tensor([1])), torch.tensor(0.9)))
    assert torch.equal(model.sample_actions(batch, noise=noise), model.sample_actions(changed, noise=noise))
    assert torch.equal(model.compute_loss(batch, "fast")["logits"], model.compute_loss(changed, "fast")["logits"])

    # More padding: other shapes, so only equal up to float rounding.
    longer = dataclasses.replace(
        batch, tokens=torch.cat([batch.tokens, torch.zeros(3, 9, dtype=torch.long)], 1),
        token_masks=torch.cat([batch.token_masks, torch.zeros(3, 9, dtype=torch.bool)], 1))
    torch.testing.assert_close(model.sample_actions(longer, noise=noise), model.sample_actions(batch, noise=noise),
                               atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- inference
def test_sample_actions_with_and_without_kv_cache_agree(model, batch):
    noise = torch.randn(3, model.config.action_horizon, model.config.action_dim)
    cached = model.sample_actions(batch, noise=noise, use_kv_cache=True)
    recomputed = model.sample_actions(batch, noise=noise, use_kv_cache=False)
    assert cached.shape == (3, model.config.action_horizon, model.config.action_dim)
    assert cached.dtype == torch.float32
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=0)
    assert not torch.allclose(cached, noise)  # the steps did something


def test_sample_actions_rejects_wrongly_shaped_noise(model, batch):
    with pytest.raises(ValueError, match="noise has shape"):
        model.sample_actions(batch, noise=torch.zeros(3, 5, 5))


def test_greedy_generation_with_kv_cache_matches_a_full_forward(model, batch):
    new = model.generate_text(batch, max_new_tokens=6, stop_at_eos=False)
    assert [len(s) for s in new] == [6, 6, 6]
    # Teacher-force the generated tokens through the training path: each must be the argmax.
    targets = torch.tensor(new)
    forced = dataclasses.replace(batch, target_tokens=targets, target_masks=torch.ones_like(targets, dtype=torch.bool),
                                 target_loss_masks=torch.ones_like(targets, dtype=torch.bool))
    logits = model.compute_loss(forced, recipe="fast")["logits"]
    assert logits.argmax(-1).view(3, 6).tolist() == new


def test_decode_fast_actions_reports_malformed_sequences_instead_of_zeros(model, batch):
    import numpy as np

    from ki_vla_ros.model.fast import FASTTokenizer

    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, model.config.action_horizon)[None, :, None]
    chunks = np.sin(2 * np.pi * rng.uniform(0.2, 1, (64, 1, 4)) * t + rng.uniform(0, 6, (64, 1, 4)))
    model.fast_tokenizer = FASTTokenizer.fit(chunks, vocab_size=model.config.fast_vocab_size)
    try:
        result = model.decode_fast_actions(batch, max_new_tokens=8, action_dim=4)  # untrained: garbage tokens
    finally:
        model.fast_tokenizer = None
    assert result.actions.shape == (3, model.config.action_horizon, model.config.action_dim)
    assert not result.valid.any()
    assert torch.isnan(result.actions).all()
    assert all(isinstance(e, str) and e for e in result.errors)


# -------------------------------------------------------------------------- learning
def test_tiny_model_overfits_one_batch_and_samples_approach_targets():
    m = tiny_model(num_cameras=1)
    batch = m.example_batch(batch_size=3, seed=0)  # two robot samples, one VLM (text-only) sample
    g = torch.Generator().manual_seed(1)
    b, h, d = batch.actions.shape
    # Evaluate the training objective (t ~ Beta(1.5, 1)) at fixed draws, so the comparison is not noise.
    draws = [(torch.randn(b, h, d, generator=g), sample_time(b, "cpu")) for _ in range(8)]

    def losses():
        with torch.no_grad():
            out = [m.compute_loss(dataclasses.replace(batch, noise=n, time=t), "ki") for n, t in draws]
        return sum(float(o["flow"]) for o in out) / len(out), float(out[0]["ce"])

    flow0, ce0 = losses()
    sample_noise = torch.randn(b, h, d, generator=g)
    robot = batch.has_actions

    def sample_error():
        with torch.no_grad():
            return float((m.sample_actions(batch, noise=sample_noise)[robot] - batch.actions[robot]).pow(2).mean())

    error0 = sample_error()
    steps = 200
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    for _ in range(steps):
        loss = m.compute_loss(batch, recipe="ki")["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    flow1, ce1 = losses()
    print(f"flow {flow0:.3f} -> {flow1:.4f}, ce {ce0:.3f} -> {ce1:.4f}")
    assert flow1 < flow0 / 10 and ce1 < ce0 / 10

    error1 = sample_error()
    print(f"sampled-actions mean squared error {error0:.3f} -> {error1:.4f}")
    assert error1 < error0 / 10


def test_fast_recipe_learns_to_emit_decodable_fast_tokens_and_vlm_text():
    import numpy as np

    from ki_vla_ros.model.fast import FASTTokenizer
    from ki_vla_ros.model.normalize import NormStats

    m = tiny_model(num_cameras=1)
    c = m.config
    m.norm_stats = {"state": NormStats.identity(8), "actions": NormStats.identity(4)}  # a 4-dof robot
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, c.action_horizon)[None, :, None]
    chunks = 0.8 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5, (256, 1, 4)) * t + rng.uniform(0, 2 * np.pi, (256, 1, 4)))
    m.fast_tokenizer = FASTTokenizer.fit(chunks, vocab_size=c.fast_vocab_size, scale=10.0)
    batch = m.example_batch(batch_size=3, seed=0)
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3, weight_decay=0.0)
    for _ in range(80):
        loss = m.compute_loss(batch, recipe="fast")["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    result = m.decode_fast_actions(batch, action_dim=4)
    robot = batch.has_actions
    assert result.valid.tolist() == robot.tolist()  # the VLM sample answers in text, not in FAST tokens
    bound = np.sqrt(c.action_horizon) * 0.5 / 10.0  # FAST rounding error bound at scale 10
    error = (result.actions[robot][..., :4] - batch.actions[robot][..., :4]).abs().max()
    assert error <= bound
    assert (result.actions[robot][..., 4:] == 0).all()
    answer = m.generate_text(batch, max_new_tokens=30)[-1]
    assert m.text_tokenizer.decode(answer) == "a red cup on a table"


# ---------------------------------------------------------------------------- config
def test_example_batch_is_consistent(model):
    b = model.example_batch(batch_size=4, seed=3)
    c = model.config
    assert b.images.shape == (4, c.num_cameras, 3, c.image_size, c.image_size)
    assert b.images.min() >= -1 and b.images.max() <= 1
    assert b.tokens.shape == b.token_masks.shape and b.target_tokens.shape == b.target_masks.shape
    assert b.tokens.max() < c.vocab_size and b.target_tokens.max() < c.vocab_size
    assert b.has_actions.tolist() == [True, True, True, False]
    assert b.actions.shape == (4, c.action_horizon, c.action_dim) and b.actions.abs().max() <= 1
    assert (b.target_loss_masks <= b.target_masks).all()
    assert torch.equal(model.example_batch(4, 3).tokens, b.tokens)


def test_config_round_trips_through_json_and_validates_shared_attention_fields():
    c = KIVLAConfig.preset("tiny")
    assert KIVLAConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="expert_head_dim is 16 but head_dim is 32"):
        KIVLAConfig.preset("tiny", expert_head_dim=16)
    with pytest.raises(ValueError, match="expert_depth"):
        KIVLAConfig.preset("pi05", expert_depth=12)
    with pytest.raises(ValueError, match="unknown field"):
        KIVLAConfig.from_dict({**c.to_dict(), "num_expert_layers": 3})
    with pytest.raises(ValueError, match="preset"):
        KIVLAConfig.preset("pi0-huge")


def test_pi05_preset_has_the_parameter_count_of_the_architecture():
    c = KIVLAConfig.preset("pi05")
    with torch.device("meta"):
        m = KIVLA(c)

    def linear(i, o, bias=True):
        return i * o + (o if bias else 0)

    v, w, e = c.vision_width, c.width, c.expert_width
    siglip = (linear(3 * c.patch_size ** 2, v) + c.tokens_per_image * v + 2 * v  # patches, positions, final LN
              + c.vision_depth * (4 * v + 4 * linear(v, v) + linear(v, c.vision_mlp_dim) + linear(c.vision_mlp_dim, v)))
    projector = linear(v, w)
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    gemma = c.vocab_size * w + w + c.depth * (  # embedding (tied with lm_head), final norm
        linear(w, q, False) + 2 * linear(w, kv, False) + linear(q, w, False) + 3 * w * c.mlp_dim + 2 * w)
    adarms = linear(e, 3 * e)
    expert = adarms + c.depth * (linear(e, q, False) + 2 * linear(e, kv, False) + linear(q, e, False)
                                 + 3 * e * c.expert_mlp_dim + 2 * adarms)
    expert += linear(c.action_dim, e) + linear(e, c.action_dim) + 2 * linear(e, e)
    expected = siglip + projector + gemma + expert
    total = count_parameters(m)
    print(f"pi05 preset: {total:,} parameters (SigLIP {siglip:,}, projector {projector:,}, Gemma {gemma:,}, "
          f"action expert {expert:,})")
    assert count_parameters(m.action_expert) == expert
    assert total == expected
    assert 3.3e9 < total < 3.7e9  # "π0.5 ≈ 3.3B" + adaRMSNorm dense layers


def test_delta_action_dims_are_validated_and_round_trip_through_json(tmp_path):
    config = KIVLAConfig.preset("tiny", action_dim=8, delta_action_dims=(0, 1, 6))
    config.save(tmp_path / "config.json")
    assert KIVLAConfig.load(tmp_path / "config.json") == config
    for bad in ((1, 0), (0, 0), (8,), (-1,), (True,)):
        with pytest.raises(ValueError, match=r"KIVLAConfig.delta_action_dims is .*; expected increasing distinct "
                                             r"action indices in 0..7"):
            KIVLAConfig.preset("tiny", action_dim=8, delta_action_dims=bad)
