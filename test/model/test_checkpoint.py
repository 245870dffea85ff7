"""Checkpoints: own format round trip, strict import of the openpi and LeRobot π0.5 layouts."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ki_vla_ros.model.checkpoint import CheckpointError, read_config
from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.fast import FASTTokenizer
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.model.normalize import NormStats, save_norm_stats

torch.set_num_threads(1)

TINY = KIVLAConfig.preset("tiny")


@pytest.fixture(scope="module")
def source():
    """A tiny model whose weights are exactly representable in bfloat16 (released weights are bf16)."""
    torch.manual_seed(1)
    m = KIVLA(TINY).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return m


@pytest.fixture(scope="module")
def batch(source):
    return source.example_batch(batch_size=2, seed=0)


@pytest.fixture(scope="module")
def noise():
    return torch.randn(2, TINY.action_horizon, TINY.action_dim, generator=torch.Generator().manual_seed(5))


def openpi_state_dict(model: KIVLA) -> dict:
    """The model's weights under the names openpi's convert_jax_model_to_pytorch.py writes for π0.5."""
    sd = {}
    for name, t in model.backbone.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding; safetensors.save_model stores the pair once ...
        if name == "model.language_model.embed_tokens.weight":
            name = "lm_head.weight"  # ... under the head's name
        name = name.replace("model.vision_tower.", "model.vision_tower.vision_model.")  # transformers 4.x level
        sd["paligemma_with_expert.paligemma." + name] = t.to(torch.bfloat16)
    for name, t in model.action_expert.state_dict().items():
        prefix = "paligemma_with_expert.gemma_expert.model." if name.startswith(("layers.", "norm.")) else ""
        sd[prefix + name] = t.to(torch.bfloat16)
    # GemmaForCausalLM's head: in the released file, never used by π0.5.
    sd["paligemma_with_expert.gemma_expert.lm_head.weight"] = torch.zeros(TINY.vocab_size, TINY.expert_width,
                                                                          dtype=torch.bfloat16)
    for key in ("paligemma_with_expert.paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight",
                "paligemma_with_expert.paligemma.model.multi_modal_projector.linear.weight",
                "paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.q_proj.weight",
                "paligemma_with_expert.paligemma.model.language_model.norm.weight",
                "paligemma_with_expert.gemma_expert.model.layers.0.input_layernorm.dense.weight",
                "paligemma_with_expert.gemma_expert.model.layers.0.post_attention_layernorm.dense.bias",
                "paligemma_with_expert.gemma_expert.model.layers.0.mlp.gate_proj.weight",
                "paligemma_with_expert.gemma_expert.model.norm.dense.weight",
                "action_in_proj.weight", "action_out_proj.bias", "time_mlp_in.weight", "time_mlp_out.bias"):
        assert key in sd, key  # the released layout, spelled out
    return sd


def write(directory, state_dict):
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(directory / "model.safetensors"))
    return directory


def test_save_and_load_round_trip_restores_weights_tokenizers_and_norm_stats(source, batch, noise, tmp_path):
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, TINY.action_horizon)[None, :, None]
    fast = FASTTokenizer.fit(np.sin(6 * t + rng.uniform(0, 6, (32, 1, 7))), vocab_size=256)
    stats = {"state": NormStats.from_data(rng.normal(size=(50, 7))),
             "actions": NormStats.from_data(rng.normal(size=(50, 7)))}
    source.fast_tokenizer, source.norm_stats = fast, stats
    try:
        source.save_pretrained(tmp_path)
    finally:
        source.fast_tokenizer, source.norm_stats = None, None
    loaded = KIVLA.from_pretrained(tmp_path).eval()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "norm_stats.json", "text_tokenizer.json", "fast_tokenizer.json",
            "fast_bpe.json"} <= names
    assert loaded.config == TINY
    assert torch.equal(loaded.sample_actions(batch, noise=noise), source.sample_actions(batch, noise=noise))
    chunk = np.sin(6 * t[0] + np.arange(7))
    assert loaded.fast_tokenizer.encode(chunk) == fast.encode(chunk)
    for key in ("state", "actions"):
        np.testing.assert_array_equal(loaded.norm_stats[key].q01, stats[key].q01)
        np.testing.assert_array_equal(loaded.norm_stats[key].q99, stats[key].q99)
    assert loaded.text_tokenizer.encode("hi") == source.text_tokenizer.encode("hi")


def test_openpi_layout_loads_strictly_and_gives_identical_actions(source, batch, noise, tmp_path):
    write(tmp_path, openpi_state_dict(source))
    loaded = KIVLA.from_pretrained(tmp_path, config=TINY).eval()
    assert torch.equal(loaded.sample_actions(batch, noise=noise), source.sample_actions(batch, noise=noise))
    assert loaded.backbone.lm_head.weight is loaded.backbone.model.language_model.embed_tokens.weight


def test_lerobot_layout_loads_strictly_and_gives_identical_actions(source, batch, noise, tmp_path):
    sd = {"model." + k: v for k, v in openpi_state_dict(source).items()}
    # LeRobot's loader writes the embedding back under its own name as well.
    sd["model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"] = \
        sd["model.paligemma_with_expert.paligemma.lm_head.weight"].clone()
    write(tmp_path, sd)
    loaded = KIVLA.from_pretrained(tmp_path, config=TINY).eval()
    assert torch.equal(loaded.sample_actions(batch, noise=noise), source.sample_actions(batch, noise=noise))


def test_missing_misshaped_and_unexpected_tensors_fail_with_the_list(source, tmp_path):
    sd = openpi_state_dict(source)
    del sd["paligemma_with_expert.gemma_expert.model.layers.1.input_layernorm.dense.weight"]
    sd["time_mlp_in.weight"] = torch.zeros(3, 3)
    sd["paligemma_with_expert.gemma_expert.model.layers.0.input_layernorm.weight"] = torch.zeros(64)  # π0, not π0.5
    write(tmp_path, sd)
    with pytest.raises(CheckpointError) as err:
        KIVLA.from_pretrained(tmp_path, config=TINY)
    msg = str(err.value)
    print(msg)
    assert "1 missing" in msg and "action_expert.layers.1.input_layernorm.dense.weight [192, 64]" in msg
    assert "1 mis-shaped" in msg and "time_mlp_in.weight: file [3, 3], expected [64, 64]" in msg
    assert "1 unexpected" in msg and "gemma_expert.model.layers.0.input_layernorm.weight [64]" in msg
    assert len(err.value.missing) == len(err.value.mismatched) == len(err.value.unexpected) == 1


def test_checkpoint_for_another_size_lists_mis_shaped_tensors(source, tmp_path):
    write(tmp_path, openpi_state_dict(source))
    with pytest.raises(CheckpointError, match="mis-shaped") as err:
        KIVLA.from_pretrained(tmp_path, config=KIVLAConfig.preset("tiny", expert_width=96))
    assert "paligemma_with_expert.gemma_expert.lm_head.weight: file [1024, 64], expected [1024, 96]" in str(err.value)


def test_corrupt_and_truncated_weights_files_are_reported_by_name(source, tmp_path):
    bad = tmp_path / "garbage"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x00\x01 this is not a safetensors file")
    with pytest.raises(CheckpointError, match=r"garbage/model.safetensors is not a readable safetensors"):
        KIVLA.from_pretrained(bad, config=TINY)

    cut = write(tmp_path / "truncated", openpi_state_dict(source))
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated/model.safetensors"):
        KIVLA.from_pretrained(cut, config=TINY)


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="pickle formats this loader does not read"):
        KIVLA.from_pretrained(tmp_path, config=TINY)


def test_released_config_files_map_onto_the_pi05_preset(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "action_dim": 32, "action_horizon": 10, "paligemma_variant": "gemma_2b",
        "action_expert_variant": "gemma_300m", "precision": "bfloat16"}))
    assert read_config(tmp_path) == KIVLAConfig.preset("pi05", action_horizon=10)

    (tmp_path / "config.json").write_text(json.dumps({
        "type": "pi05", "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m",
        "chunk_size": 16, "max_action_dim": 32, "num_inference_steps": 5, "tokenizer_max_length": 200,
        "image_resolution": [224, 224]}))
    assert read_config(tmp_path) == KIVLAConfig.preset("pi05", action_horizon=16, num_flow_steps=5)

    (tmp_path / "config.json").write_text(json.dumps({"paligemma_variant": "gemma_2b_lora"}))
    with pytest.raises(ValueError, match="gemma_2b_lora"):
        read_config(tmp_path)


def test_openpi_norm_stats_under_assets_are_found(source, tmp_path):
    write(tmp_path, openpi_state_dict(source))
    (tmp_path / "assets" / "my_robot").mkdir(parents=True)
    stats = {"state": NormStats.identity(7), "actions": NormStats.identity(6)}
    save_norm_stats(tmp_path / "assets" / "my_robot" / "norm_stats.json", stats)
    loaded = KIVLA.from_pretrained(tmp_path, config=TINY)
    assert loaded.norm_stats["actions"].dim == 6 and loaded.norm_stats["state"].dim == 7


def test_lerobot_normalizer_stats_are_read_as_quantile_norm_stats(source, tmp_path):
    write(tmp_path, {"model." + k: v for k, v in openpi_state_dict(source).items()})
    save_file({"observation.state.q01": -torch.ones(7), "observation.state.q99": 2 * torch.ones(7),
               "observation.state.mean": torch.zeros(7), "observation.state.std": torch.ones(7),
               "action.q01": torch.zeros(6), "action.q99": torch.full((6,), 0.5)},
              str(tmp_path / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    stats = KIVLA.from_pretrained(tmp_path, config=TINY).norm_stats
    np.testing.assert_array_equal(stats["state"].q99, np.full(7, 2.0, np.float32))
    np.testing.assert_array_equal(stats["actions"].q99, np.full(6, 0.5, np.float32))
