"""bf16 as openpi runs the released π0.5: RMSNorms and SigLIP's patch/position embeddings stay fp32."""

import torch

from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.model.precision import float32_parameter_names, set_precision

TINY = KIVLAConfig.preset("tiny")


def model_with_trained_like_norms() -> KIVLA:
    """Random weights, and norm parameters away from their zero init (bf16 holds zeros exactly)."""
    torch.manual_seed(0)
    model = KIVLA(TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    return model


def test_bf16_keeps_exactly_the_norms_and_the_siglip_embeddings_in_fp32():
    model = set_precision(model_with_trained_like_norms(), torch.bfloat16)
    kept = float32_parameter_names(model)
    assert "backbone.model.vision_tower.embeddings.patch_embedding.weight" in kept
    assert "backbone.model.vision_tower.embeddings.position_embedding.weight" in kept
    assert "backbone.model.language_model.norm.weight" in kept
    assert "action_expert.layers.0.input_layernorm.dense.weight" in kept  # adaRMS scale/shift/gate
    assert "action_expert.norm.dense.bias" in kept
    for name in kept:
        assert any(part in name for part in ("embeddings.patch_embedding", "embeddings.position_embedding",
                                             "layernorm", ".norm.")), name
    assert "backbone.model.vision_tower.encoder.layers.0.layer_norm1.weight" not in kept  # SigLIP LayerNorms: bf16
    assert model.action_expert.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert model.backbone.model.language_model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


def test_bf16_actions_and_losses_stay_close_to_fp32():
    model = model_with_trained_like_norms()
    batch = model.example_batch(3)
    noise = torch.randn(3, TINY.action_horizon, TINY.action_dim)
    reference = model.sample_actions(batch, noise=noise)
    set_precision(model, torch.bfloat16)
    actions = model.sample_actions(batch, noise=noise)
    assert actions.dtype == torch.float32
    assert float((actions - reference).abs().max()) < 0.05  # bf16 keeps 8 bits of mantissa
    loss = model.compute_loss(batch)["total"]
    assert torch.isfinite(loss)
    loss.backward()  # trains in the mixed precision too


def test_loading_in_bf16_applies_the_policy_and_keeps_the_fp32_values(tmp_path):
    source = model_with_trained_like_norms()
    source.save_pretrained(tmp_path)
    loaded = KIVLA.from_pretrained(tmp_path, dtype=torch.bfloat16)
    norm = loaded.backbone.model.language_model.layers[0].input_layernorm.weight
    assert norm.dtype == torch.float32
    assert torch.equal(norm, source.backbone.model.language_model.layers[0].input_layernorm.weight)
    assert loaded.action_expert.action_in_proj.weight.dtype == torch.bfloat16
