"""The training loop: every recipe learns, resume is exact, checkpoints load for inference."""
from __future__ import annotations

import csv
import dataclasses
import os
import stat

import numpy as np
import pytest
import torch

from ki_vla_ros.model.inference import Predictor
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.train.prepare import prepare_run
from ki_vla_ros.train.schedule import learning_rate
from ki_vla_ros.train.trainer import TrainConfig, is_vlm_slot, train


def _config(tmp_path=None, **overrides) -> TrainConfig:
    base = dict(recipe="ki", steps=6, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, vlm_ratio=0.25,
                progress=False, out_dir=str(tmp_path) if tmp_path else None)
    return TrainConfig(**{**base, **overrides})


def _held_out_losses(model: KIVLA, batch, recipe: str) -> dict[str, float]:
    with torch.no_grad():
        losses = model.compute_loss(batch, recipe)
    return {k: float(losses[k]) for k in ("ce", "flow")}


@pytest.mark.parametrize("recipe", ["ki", "joint", "pi0", "fast"])
def test_a_short_run_lowers_every_loss_the_recipe_trains(sim_dataset_dir, recipe):
    # pi0 trains on the flow loss only, so VLM samples would add nothing to it.
    config = _config(recipe=recipe, steps=10, log_every=5, lr=3e-3, vlm_ratio=0.0 if recipe == "pi0" else 0.25)
    run = prepare_run(sim_dataset_dir, config)
    # A fixed batch with fixed noise and flow times: the losses before and after are comparable.
    batch = run.action_sampler.sample(8, np.random.default_rng(1234))
    before = _held_out_losses(run.model, batch, recipe)
    history = train(run.model, config, run.action_sampler, run.vlm_sampler)
    after = _held_out_losses(run.model, batch, recipe)

    assert [m["step"] for m in history] == [5, 10]
    if recipe != "pi0":
        assert after["ce"] < 0.9 * before["ce"], (before, after)
    if recipe != "fast":
        assert after["flow"] < 0.9 * before["flow"], (before, after)
    trained = {"ki": ("ce", "flow"), "joint": ("ce", "flow"), "pi0": ("flow",), "fast": ("ce",)}[recipe]
    for name in {"ce", "flow"} - set(trained):
        assert all(m[name] == 0.0 for m in history), f"{recipe} must not report a {name} loss"


def test_resuming_from_last_continues_bit_exactly(sim_dataset_dir, tmp_path):
    straight = prepare_run(sim_dataset_dir, _config(tmp_path / "straight"))
    reference = train(straight.model, _config(tmp_path / "straight"), straight.action_sampler, straight.vlm_sampler)

    interrupted_config = _config(tmp_path / "interrupted")
    first = prepare_run(sim_dataset_dir, interrupted_config)
    train(first.model, interrupted_config, first.action_sampler, first.vlm_sampler,
          callback=lambda step, metrics, model: step == 3)  # stop after step 3, as a crash would
    assert (tmp_path / "interrupted" / "last" / "trainer_state.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    for written in (tmp_path / "interrupted" / "last").iterdir():  # safetensors alone would make them 0600
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask, written

    resume_config = dataclasses.replace(interrupted_config, resume=True)
    second = prepare_run(sim_dataset_dir, resume_config)  # a new process would start here
    rest = train(second.model, resume_config, second.action_sampler, second.vlm_sampler)

    assert [m["step"] for m in rest] == [4, 5, 6]
    for got, want in zip(rest, reference[3:]):
        assert (got["total"], got["ce"], got["flow"], got["grad_norm"], got["lr"]) == \
               (want["total"], want["ce"], want["flow"], want["grad_norm"], want["lr"])
    for (name, p), q in zip(straight.model.named_parameters(), second.model.parameters()):
        assert torch.equal(p, q), name
    with open(tmp_path / "interrupted" / "metrics.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def test_a_slower_vision_tower_keeps_its_own_learning_rate_across_a_resume(sim_dataset_dir, tmp_path):
    """--vision-lr-scale puts the tower in its own AdamW group; the group and its share of the
    schedule survive a checkpoint, so the resumed run ends where an uninterrupted one does."""
    config = _config(tmp_path / "straight", steps=4, vision_lr_scale=0.1)
    straight = prepare_run(sim_dataset_dir, config)
    tower_before = {n: p.detach().clone() for n, p in straight.model.named_parameters() if ".vision_tower." in n}
    train(straight.model, config, straight.action_sampler, straight.vlm_sampler)
    assert any(not torch.equal(p, tower_before[n]) for n, p in straight.model.named_parameters() if n in tower_before)

    interrupted = _config(tmp_path / "interrupted", steps=4, vision_lr_scale=0.1)
    first = prepare_run(sim_dataset_dir, interrupted)
    train(first.model, interrupted, first.action_sampler, first.vlm_sampler, callback=lambda step, m, model: step == 2)
    resumed = dataclasses.replace(interrupted, resume=True)
    second = prepare_run(sim_dataset_dir, resumed)
    train(second.model, resumed, second.action_sampler, second.vlm_sampler)
    for (name, p), q in zip(straight.model.named_parameters(), second.model.parameters()):
        assert torch.equal(p, q), name


def test_the_last_checkpoint_is_a_model_the_policy_loads(sim_dataset_dir, sim_dataset, tmp_path):
    config = _config(tmp_path, steps=2, vlm_ratio=0.0)
    run = prepare_run(sim_dataset_dir, config)
    train(run.model, config, run.action_sampler)

    predictor = Predictor.from_pretrained(str(tmp_path / "last"), device="cpu")
    images = sim_dataset.frame_images(0, 0)
    state, _ = sim_dataset.state_actions(0)
    chunk = predictor.predict_chunk([images["base"], images["wrist"]], state[0], sim_dataset.instruction(0))
    assert chunk.shape == (10, len(sim_dataset.action_names))
    assert np.isfinite(chunk).all()
    assert (tmp_path / "checkpoint_000002" / "model.safetensors").is_file()
    assert predictor.model.fast_tokenizer is not None  # the FAST baseline can decode from it too
    # the names and step it was trained on ride along with the norm stats (`ki-vla check` compares them)
    assert predictor.model.data_layout == {"state_names": list(sim_dataset.state_names),
                                           "action_names": list(sim_dataset.action_names),
                                           "step_duration_s": sim_dataset.step_duration_s}


def test_delta_actions_joints_makes_every_joint_an_offset_except_the_gripper(sim_dataset_dir, sim_dataset):
    # recipe pi0: no FAST refit, so the shared dataset directory is left as it is
    run = prepare_run(sim_dataset_dir, _config(recipe="pi0", vlm_ratio=0.0, delta_actions="joints"))
    names = sim_dataset.action_names  # panda_joint1..7, panda_finger_joint1
    assert [names[d] for d in run.model.config.delta_action_dims] == [n for n in names if "finger" not in n]
    # the norm stats are those of the offsets: a joint's offsets are centred near 0, its positions are not
    assert abs(run.model.norm_stats["actions"].mean[1]) < abs(sim_dataset.norm_stats()["actions"].mean[1])

    run = prepare_run(sim_dataset_dir,
                      _config(recipe="pi0", vlm_ratio=0.0, delta_actions="panda_joint2, panda_joint1"))
    assert run.model.config.delta_action_dims == (0, 1)
    with pytest.raises(ValueError, match=r"--delta-actions names \['elbow'\]; expected 'none', 'joints' or"):
        prepare_run(sim_dataset_dir, _config(recipe="pi0", vlm_ratio=0.0, delta_actions="elbow"))


def test_vlm_slots_are_spread_evenly_whatever_the_split_over_ranks():
    assert [is_vlm_slot(k, 0.25) for k in range(8)] == [False, False, False, True] * 2
    assert sum(is_vlm_slot(k, 0.3) for k in range(10)) == 3
    assert not any(is_vlm_slot(k, 0.0) for k in range(8))
    assert all(is_vlm_slot(k, 1.0) for k in range(8))


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_ten_percent():
    lr = [learning_rate(s, peak_lr=1.0, warmup_steps=10, total_steps=110) for s in range(110)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0) and lr[60] == pytest.approx(0.55)
    assert lr[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="recipe is 'kl'"):
        TrainConfig(recipe="kl")
    with pytest.raises(ValueError, match="vlm_ratio is 1.5"):
        TrainConfig(vlm_ratio=1.5)


def test_vlm_data_is_required_when_the_ratio_asks_for_it(sim_dataset_dir):
    config = _config(steps=1, vlm_ratio=0.5)
    run = prepare_run(sim_dataset_dir, config)
    with pytest.raises(ValueError, match="no VLM sampler"):
        train(run.model, config, run.action_sampler, None)
