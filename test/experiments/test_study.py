"""The claims study: its measurements on hand-made cases, one training loop, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from experiments import evaluation as ev
from experiments.batches import MixedSampler, ReachActionSampler, TextSampler, fit_norm_stats, normalized_chunks
from experiments.stages import ADAM_BETAS, WEIGHT_DECAY, SequentialBatches, StageConfig, train_stage
from experiments.study import (ARMS, SIZES, StudySize, fast_tokens_by_horizon, format_table, prepare_data,
                               run_study, step_ratio, study_model_config, write_outputs)
from experiments.tasks import TEXT_KINDS, generate_reach_data
from ki_vla_ros.model.fast import FASTTokenizer
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim.tasks import start_reach_episode
from ki_vla_ros.train.schedule import learning_rate
from ki_vla_ros.train.trainer import TrainConfig, train

SINGLE_ARM = load_robot_config("single_arm")


# ------------------------------------------------------------------ claim 3: the switched instruction
def _ik_chunk(robot, block: str) -> np.ndarray:
    """Joint targets that put the gripper on `block` (planar IK), held for a chunk."""
    arm = robot.arms[0]
    goal = arm.inverse(robot.scene.object(block).xy, near=(robot.home[arm.shoulder_joint],
                                                           robot.home[arm.elbow_joint]))
    action = np.array([robot.home[j] for j in SINGLE_ARM.joints])
    action[SINGLE_ARM.joints.index(arm.shoulder_joint)] = goal[0]
    action[SINGLE_ARM.joints.index(arm.elbow_joint)] = goal[1]
    return np.tile(action, (10, 1))


def _follower(seed):
    """A perfect policy for the seed's scene: goes to whichever block the prompt names."""
    robot, _ = start_reach_episode(SINGLE_ARM, seed)

    def chunk(images, state, prompt):
        named = [n for n in robot.scene.names if n in prompt]
        assert len(named) == 1, (prompt, robot.scene.names)
        return _ik_chunk(robot, named[0])

    return chunk


def _deaf(seed):
    """Goes to the seed's first target whatever the prompt says."""
    robot, task = start_reach_episode(SINGLE_ARM, seed)
    return lambda images, state, prompt: _ik_chunk(robot, task.target)


def test_a_switched_instruction_counts_reaching_the_new_block_and_staying_on_the_old_one():
    seed = next(s for s in range(100) if len(start_reach_episode(SINGLE_ARM, s)[0].scene.names) >= 2)
    follows = ev.run_switch_episode(SINGLE_ARM, seed, _follower(seed), switch_step=10)
    _, first = start_reach_episode(SINGLE_ARM, seed)
    assert follows["target"] != first.target and follows["instruction"] == f"move to the {follows['target']}"
    assert follows["success"] and follows["nearest_is_target"] and not follows["ended_at_first"]
    deaf = ev.run_switch_episode(SINGLE_ARM, seed, _deaf(seed), switch_step=10)
    assert not deaf["success"] and deaf["ended_at_first"] and deaf["wrong_block"]
    summary = ev.closed_loop_switch(SINGLE_ARM, [seed], _deaf(seed))
    assert summary["success_rate"] == 0.0 and summary["ended_at_first_rate"] == 1.0
    with pytest.raises(ValueError, match="switch_step is 30"):
        ev.run_switch_episode(SINGLE_ARM, seed, _deaf(seed), switch_step=30, steps=30)


# ------------------------------------------------------------------ claim 4: tokens by horizon
def test_fast_needs_more_tokens_for_the_reach_at_longer_horizons():
    size = dataclasses.replace(SIZES["quick"], train_episodes=40, eval_episodes=8)
    data = prepare_data("single_arm", size)
    tokens = fast_tokens_by_horizon(data, (5, 20, 40))
    assert sorted(tokens) == [5, 20, 40]
    assert tokens[5] < tokens[20] < tokens[40], tokens


# ------------------------------------------------------------------ one training loop
def _tiny_model_and_sampler(vlm_ratio: float):
    data = generate_reach_data(SINGLE_ARM, range(4), image_size=32)
    config = study_model_config(SINGLE_ARM.action_dim, SINGLE_ARM.num_image_slots)
    stats = fit_norm_stats(data)
    chunks = normalized_chunks(data, stats, config.action_horizon)
    fast = FASTTokenizer.fit(chunks.reshape(-1, *chunks.shape[2:]), vocab_size=config.fast_vocab_size)
    torch.manual_seed(0)
    model = KIVLA(config, fast_tokenizer=fast, norm_stats=stats)
    actions = ReachActionSampler(data, config, model.text_tokenizer, fast, stats)
    text = TextSampler(data, config, model.text_tokenizer, data.text(TEXT_KINDS))
    return model, MixedSampler(actions, text, vlm_ratio)


def _reference_stage(model, sampler, stage: StageConfig) -> None:
    """What a stage is documented to compute (experiments/stages.py), written out as a plain loop:
    torch's AdamW defaults with weight decay 1e-4 over the trainable parameters (the vision tower
    frozen at scale 0), one numpy stream of batches, torch seeded once, warm-up + cosine to 10 %,
    clipping to norm 1, the recipe's total loss. The shipped demo checkpoint was trained by this."""
    if stage.vision_lr_scale == 0:
        model.backbone.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=1e-4)
    rng = np.random.default_rng(stage.seed)
    torch.manual_seed(stage.seed)
    model.train()
    for step in range(stage.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, peak_lr=stage.lr, warmup_steps=stage.warmup_steps,
                                        total_steps=stage.steps)
        batch = sampler.sample(stage.batch_size, rng)
        loss = model.compute_loss(batch, stage.recipe)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()


@pytest.mark.parametrize("recipe,vision_lr_scale", [("ki", 0.0), ("fast", 0.0), ("pi0", 1.0)])
def test_a_stage_in_the_product_trainer_computes_exactly_the_documented_loop(recipe, vision_lr_scale):
    """The experiments have no training loop of their own: train_stage runs train.trainer.train,
    and its weights match the documented loop bit for bit (so the demo checkpoint stays
    reproducible byte for byte)."""
    assert ADAM_BETAS == (0.9, 0.999) and WEIGHT_DECAY == 1e-4
    stage = StageConfig(recipe=recipe, steps=4, batch_size=4, lr=1e-3, warmup_steps=2, seed=3,
                        vision_lr_scale=vision_lr_scale)
    ours, sampler = _tiny_model_and_sampler(0.25)
    train_stage(ours, sampler, stage)
    reference, sampler = _tiny_model_and_sampler(0.25)
    _reference_stage(reference, sampler, stage)
    ours_state, ref_state = ours.state_dict(), reference.state_dict()
    changed = [k for k in ref_state if not torch.equal(ref_state[k], _tiny_model_and_sampler(0.0)[0].state_dict()[k])]
    assert changed, "the reference loop trained nothing"
    different = [k for k in ref_state if not torch.equal(ours_state[k], ref_state[k])]
    assert not different, different[:5]


def test_sequential_batches_refuse_steps_out_of_order_and_the_trainer_refuses_batches_with_samplers():
    model, sampler = _tiny_model_and_sampler(0.0)
    batches = SequentialBatches(sampler, batch_size=2, seed=0)
    assert batches(0)[0].batch_size == 2
    with pytest.raises(RuntimeError, match="asked for step 5; expected step 1"):
        batches(5)
    with pytest.raises(ValueError, match="expected a single process and no samplers"):
        train(model, TrainConfig(steps=1, batch_size=2, progress=False, device="cpu"), action_sampler=sampler,
              batches=SequentialBatches(sampler, 2, 0))
    with pytest.raises(ValueError, match="vision_lr_scale is -0.5"):
        TrainConfig(vision_lr_scale=-0.5)


def test_the_step_ratio_to_ki_is_a_bound_when_runs_never_reached_the_target():
    ki = {"steps_to_target": [100, 300], "reached": 2, "seeds": 2}
    assert step_ratio({"steps_to_target": [400, 800], "reached": 2, "seeds": 2}, ki, 1000) == \
        {"ratio": 3.0, "censored": False, "ki_censored": False}
    # a run that never got there counts as the whole budget: the ratio is then at least this
    assert step_ratio({"steps_to_target": [400, None], "reached": 1, "seeds": 2}, ki, 1000) == \
        {"ratio": 3.5, "censored": True, "ki_censored": False}


# ------------------------------------------------------------------ the whole study, tiny
TINY = StudySize(train_episodes=8, eval_episodes=4, pretrain_steps=4, vla_steps=6, seeds=(0,), eval_every=3,
                 eval_samples=4, closed_loop_episodes=1, vqa_questions=6, latency_reps=1, vision_pretrain_steps=2,
                 point_pretrain_steps=2, vlm_scenes=6, text_tokenizer="sentencepiece", where_weight=3.0,
                 delta_actions=True, first_step_fraction=0.3, point_questions=True, target_mse=10.0,
                 fast_token_targets=(6,), latency_horizons=(5, 10))


def test_the_study_runs_every_arm_and_reports_each_claim(tmp_path):
    results = run_study("tiny", size=TINY, log=lambda line: None)
    assert [r["arm"] for r in results["runs"]] == list(ARMS)
    for run in results["runs"]:
        assert run["curve"]["steps"] == [0, 3, 6]
        assert set(run["retention"]) == {"vqa", "point"}
        assert run["closed_loop"]["own"]["episodes"] == 1 and "ended_at_first_rate" in run["closed_loop"]["switched"]
        assert (len(run["curve"]["mse_fast_decoding"]) == 3) == (run["recipe"] in ("ki", "joint"))
    summary = results["summary"]
    # target_mse 10 is met before training by every arm: steps 0, and no ratio to ki
    assert all(summary[arm]["steps_to_target"] == [0] for arm in ARMS)
    assert all(np.isnan(r["ratio"]) for r in summary["step_ratios_over_ki"].values())
    assert set(results["reference"]["prior_only"]) == {"vqa", "point"}
    row, = results["inference"]["rows"]
    assert row["fast_tokens"] == 6 and row["horizon"] in (5, 10) and row["flow_median_ms"] > 0
    table = format_table(results)
    for claim in ("claim 1", "claim 2", "claim 3", "claim 4"):
        assert claim in table
    written = write_outputs(results, tmp_path)
    assert json.loads((tmp_path / "ki_claims.json").read_text())["runs"][0]["arm"] == "ki"
    assert {p.name for p in written} == {"ki_claims.json", "action_error.png", "retention_and_following.png"}
    with pytest.raises(ValueError, match="arms \\['pi05'\\]"):
        run_study("tiny", size=TINY, arms=("ki", "pi05"))
