"""The small-scale KI study's data, measurements and the shipped demo checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ki_vla_ros.model.fast import FASTTokenizer
from ki_vla_ros.model.inference import Predictor, format_subtask_prompt
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.model.normalize import normalize
from ki_vla_ros.model.preprocess import discretize_state, format_prompt
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.model_loading import DEMO_CHECKPOINT_DIR
from ki_vla_ros.runtime.policy import Policy
from ki_vla_ros.sim.tasks import start_reach_episode
from experiments import evaluation as ev
from experiments.batches import (MixedSampler, ReachActionSampler, TextSampler, fit_norm_stats,
                                 normalized_chunks)
from experiments.study import study_model_config
from experiments.tasks import action_chunks, generate_reach_data

SINGLE_ARM = load_robot_config("single_arm")


@pytest.fixture(scope="module")
def data():
    return generate_reach_data(SINGLE_ARM, range(4), image_size=32)


# ------------------------------------------------------------------ data
def test_each_demo_reaches_the_block_its_instruction_names(data):
    assert data.images.shape == (4, 20, 2, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.state.shape == data.actions.shape == (4, 20, 8)
    for e, seed in enumerate(data.seeds):
        assert data.targets[e] in data.instructions[e]
        assert data.targets[e] in data.scene_names[e]
        robot, task = start_reach_episode(SINGLE_ARM, seed)
        assert task.instruction == data.instructions[e]
        # Actions are position targets reached one step later (the expert stays within velocity limits).
        np.testing.assert_allclose(data.state[e, 1:], data.actions[e, :-1], atol=1e-4)


def test_text_samples_agree_with_the_scene(data):
    for s in data.text(("vqa",)):
        names = data.scene_names[s.episode]
        for color in ("red", "green", "blue", "yellow"):
            if s.prompt == f"Question: is there a {color} block? Answer: ":
                assert s.answer == ("yes" if f"{color} block" in names else "no")
    subtasks = data.text(("subtask",))
    assert subtasks
    for s in subtasks:
        target = s.answer.removeprefix("move to the ")
        assert target in data.scene_names[s.episode]
        assert s.prompt.startswith("Task: ") and s.prompt.endswith(". Subtask: ") and target in s.prompt
    assert format_subtask_prompt("tidy up the table: start with the red block") in \
        {s.prompt for s in data.text_samples} or all("red block" not in n for n in data.scene_names)


def test_action_chunks_repeat_the_last_action_past_the_end():
    actions = np.arange(5, dtype=np.float32).reshape(1, 5, 1)
    chunks = action_chunks(actions, horizon=3)
    assert chunks.shape == (1, 5, 3, 1)
    assert chunks[0, 0, :, 0].tolist() == [0, 1, 2]
    assert chunks[0, 4, :, 0].tolist() == [4, 4, 4]


def test_action_batches_carry_the_prompt_and_the_fast_tokens_of_the_chunk(data):
    config = study_model_config(8)
    stats = fit_norm_stats(data)
    chunks = normalized_chunks(data, stats, config.action_horizon)
    fast = FASTTokenizer.fit(chunks.reshape(-1, *chunks.shape[2:]), vocab_size=config.fast_vocab_size)
    model = KIVLA(config, fast_tokenizer=fast, norm_stats=stats)
    tok = model.text_tokenizer
    sampler = ReachActionSampler(data, config, tok, fast, stats)
    batch = sampler.batch_at([(1, 3), (2, 0)])
    bins = discretize_state(normalize(data.state[1, 3], stats["state"]), config.state_bins)
    assert tok.decode(batch.tokens[0][batch.token_masks[0]].tolist()) == format_prompt(data.instructions[1], bins)
    ids = batch.target_tokens[0][batch.target_masks[0]].tolist()
    assert ids[-1] == tok.eos_id
    decoded = fast.decode(fast.from_backbone_ids(ids[:-1], config.vocab_size), config.action_horizon, 8)
    np.testing.assert_allclose(decoded, chunks[1, 3], atol=0.2)
    np.testing.assert_allclose(batch.actions[0].numpy(), chunks[1, 3], atol=1e-6)
    assert batch.images.shape == (2, 2, 3, 32, 32) and batch.images.min() >= -1 and batch.images.max() <= 1

    text = TextSampler(data, config, tok, data.text(("vqa",)))
    mixed = MixedSampler(sampler, text, 0.25).sample(8, np.random.default_rng(0))
    assert mixed.has_actions.tolist() == [True] * 6 + [False] * 2
    assert float(mixed.actions[~mixed.has_actions].abs().sum()) == 0.0
    losses = model.compute_loss(mixed, "ki")
    assert torch.isfinite(losses["total"]) and losses["ce"] > 0 and losses["flow"] > 0


def test_first_step_fraction_draws_that_share_of_chunks_from_step_0(data):
    """Chunks from step 0 are the ones only the image and the instruction can predict."""
    config = study_model_config(8)
    stats = fit_norm_stats(data)

    def starts(fraction):
        """The share of 400 sampled chunks that are some episode's step-0 chunk."""
        sampler = ReachActionSampler(data, config, KIVLA(config).text_tokenizer, None, stats,
                                     first_step_fraction=fraction)
        actions = sampler.sample(400, np.random.default_rng(0)).actions.numpy()  # [400, H, 8]
        first = sampler.chunks[:, 0]  # [E, H, 8]
        return np.mean([any(np.array_equal(a, f) for f in first) for a in actions])

    assert starts(1.0) == 1.0
    assert 0.45 < starts(0.5) < 0.65  # plus the uniform draws that land on step 0 (1 in 20)
    assert starts(0.0) < 0.12
    with pytest.raises(ValueError, match="first_step_fraction is 1.5; expected a fraction in"):
        ReachActionSampler(data, config, KIVLA(config).text_tokenizer, None, stats, first_step_fraction=1.5)


# ------------------------------------------------------------------ measurements
def test_chunk_mse_scores_an_undecodable_chunk_as_the_mean_action():
    expected = np.ones((2, 3, 1))
    predicted = np.stack([np.ones((3, 1)), np.full((3, 1), np.nan)])
    assert ev.chunk_mse(predicted, expected) == pytest.approx(0.5)  # (0 + 1) / 2
    assert ev.chunk_mse(np.ones((2, 3, 1)), expected, valid=[True, False]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        ev.chunk_mse(np.ones((2, 3, 2)), expected)


def test_steps_to_reach_is_the_first_evaluated_step_at_or_below_the_target():
    assert ev.steps_to_reach([0, 25, 50, 75], [1.0, 0.2, 0.05, 0.01], 0.05) == 50
    assert ev.steps_to_reach([0, 25], [1.0, 0.2], 0.05) is None
    assert ev.answer_accuracy(["Yes ", "two"], ["yes", "three"]) == 0.5
    assert ev.mean_std([1.0, 3.0, None]) == (2.0, 1.0, 2)
    assert ev.latency_ms({"noop": lambda: None}, reps=5, warmup=1)["noop"]["reps"] == 5


def _oracle_chunk_fn(seed):
    """Joint targets that put the gripper on the seed's target block (planar IK), held for a chunk."""
    robot, task = start_reach_episode(SINGLE_ARM, seed)
    arm = robot.arms[0]
    goal = arm.inverse(robot.scene.object(task.target).xy, near=(robot.home[arm.shoulder_joint],
                                                                 robot.home[arm.elbow_joint]))
    home = robot.home
    action = np.array([home[j] for j in SINGLE_ARM.joints])
    action[SINGLE_ARM.joints.index(arm.shoulder_joint)] = goal[0]
    action[SINGLE_ARM.joints.index(arm.elbow_joint)] = goal[1]
    return lambda images, state, prompt: np.tile(action, (10, 1))


def test_closed_loop_counts_the_named_block_as_success_and_a_still_arm_as_failure():
    reached = ev.run_reach_episode(SINGLE_ARM, 5, _oracle_chunk_fn(5))
    assert reached.success and not reached.wrong_block and reached.final_distance_m < 0.01
    still = ev.run_reach_episode(SINGLE_ARM, 5, lambda images, state, prompt: None)
    assert not still.success and still.invalid_chunks == 6 and still.final_distance_m > 0.05
    summary = ev.summarize_outcomes([reached, still])
    assert summary["success_rate"] == 0.5 and summary["invalid_chunks"] == 6


# ------------------------------------------------------------------ the shipped checkpoint
@pytest.fixture(scope="module")
def demo_predictor():
    if not (DEMO_CHECKPOINT_DIR / "model.safetensors").is_file():
        pytest.fail(f"no demo checkpoint at {DEMO_CHECKPOINT_DIR}; run python -m experiments "
                    f"make-demo-checkpoint {DEMO_CHECKPOINT_DIR}")
    return Predictor.from_pretrained(str(DEMO_CHECKPOINT_DIR), device="cpu")


def test_demo_checkpoint_is_small_and_fits_the_single_arm_config(demo_predictor):
    size = sum(p.stat().st_size for p in DEMO_CHECKPOINT_DIR.iterdir() if p.is_file())
    assert size < 3_000_000
    Policy(demo_predictor, SINGLE_ARM)  # raises when dims, cameras or horizon do not fit
    assert (demo_predictor.state_dim, demo_predictor.action_dim, demo_predictor.num_cameras) == (8, 8, 2)


def test_the_demo_checkpoint_reaches_the_named_block_and_random_weights_do_not(demo_predictor):
    """Closed loop on 20 held-out scenes (seeded flow noise): the shipped checkpoint ends within
    the 3 cm of a success on most of them and nearest the named block on almost all; random
    weights of the same size do neither. Measured over three noise seeds: 0.75-0.90 within
    3 cm, 0.95-1.00 nearest, median 0.8-1.2 cm from the block (from 19.9 cm); random weights
    0.00-0.05, 0.50-0.60 and 34-40 cm (docs/demo_checkpoint.md)."""
    from ki_vla_ros.sim.robot import REACH_TOLERANCE_M
    from experiments.demo_checkpoint import new_model_like
    from experiments.tasks import EVAL_SEED_OFFSET

    seeds = [EVAL_SEED_OFFSET + i for i in range(20)]
    results = {}
    for name, predictor in (("demo", demo_predictor), ("random", Predictor(new_model_like(demo_predictor)))):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            results[name] = ev.closed_loop_reach(SINGLE_ARM, seeds, ev.flow_chunk_fn(predictor))
    demo, random = results["demo"], results["random"]
    assert demo["success_rate"] >= 0.5 and demo["success_rate"] >= random["success_rate"] + 0.4, (demo, random)
    assert demo["nearest_is_target_rate"] >= random["nearest_is_target_rate"] + 0.3, (demo, random)
    assert demo["median_final_distance_m"] < REACH_TOLERANCE_M, demo
    assert demo["wrong_block_rate"] <= 0.1, demo


def test_demo_checkpoint_plans_the_subtask_the_task_names(demo_predictor):
    robot, _ = start_reach_episode(SINGLE_ARM, 200_000, max_image_side_px=96)
    frames = robot.images(0.0)
    images = [frames["base"], frames["wrist"]]
    for name in robot.scene.names:
        assert demo_predictor.generate_subtask(images, f"tidy up the table: start with the {name}") == \
            f"move to the {name}"


@pytest.mark.parametrize("robot", ["bimanual", "mobile"])
def test_the_study_model_has_an_image_slot_per_camera_of_each_robot(robot):
    """The study (and make-demo-checkpoint --robot) sizes the model to the robot: a
    bimanual robot's 3 cameras and the mobile robot's 3 reach the model and the closed loop."""
    import dataclasses

    from experiments.demo_checkpoint import DEMO_SIZE
    from experiments.study import new_model, prepare_data

    config = load_robot_config(robot)
    size = dataclasses.replace(DEMO_SIZE, train_episodes=2, eval_episodes=1)
    data = prepare_data(robot, size)
    assert data.config.num_cameras == config.num_image_slots == data.train.images.shape[2]
    model = new_model(data, seed=0).eval()
    sampler = ReachActionSampler(data.train, data.config, model.text_tokenizer, data.fast, data.norm_stats)
    assert torch.isfinite(model.compute_loss(sampler.batch_at([(0, 0), (1, 3)]), "ki")["total"])
    outcome = ev.run_reach_episode(config, data.eval.seeds[0], ev.flow_chunk_fn(Predictor(model)), steps=5)
    assert np.isfinite(outcome.final_distance_m) and outcome.invalid_chunks == 0


def test_the_study_can_fit_a_word_level_tokenizer_that_travels_with_the_checkpoint(tmp_path):
    """text_tokenizer="sentencepiece": every instruction wording and block name of the task
    is whole words, the model trains with it, and a saved checkpoint brings it back."""
    import dataclasses

    from ki_vla_ros.sim.tasks import INSTRUCTION_TEMPLATES
    from experiments.demo_checkpoint import DEMO_SIZE
    from experiments.study import new_model, prepare_data

    size = dataclasses.replace(DEMO_SIZE, train_episodes=6, eval_episodes=1, text_tokenizer="sentencepiece")
    data = prepare_data("single_arm", size)
    model = new_model(data, seed=0)
    tok = model.text_tokenizer
    for template in INSTRUCTION_TEMPLATES:
        for color in ("red", "green", "blue", "yellow"):
            text = template.format(target=f"{color} block")
            assert len(tok.encode(text, add_bos=False)) == len(text.split()), text
    sampler = ReachActionSampler(data.train, data.config, tok, data.fast, data.norm_stats)
    assert torch.isfinite(model.compute_loss(sampler.batch_at([(0, 0), (1, 3)]), "ki")["total"])
    model.save_pretrained(tmp_path)
    loaded = Predictor.from_pretrained(str(tmp_path), device="cpu")
    prompt = format_prompt("reach the yellow block", [3, 250, 17, 0, 9, 128, 64, 1])
    assert loaded.model.text_tokenizer.encode(prompt) == tok.encode(prompt)


def test_the_vision_tower_trains_at_its_own_learning_rate(data):
    """The trainer's vision_lr_scale=s: Adam's first step moves every weight by about lr, so the
    vision tower's weights move s times as far as the rest's; s=0 leaves them untouched."""
    from experiments.stages import StageConfig, train_stage

    config = study_model_config(SINGLE_ARM.action_dim, SINGLE_ARM.num_image_slots)
    stats = fit_norm_stats(data)
    chunks = normalized_chunks(data, stats, config.action_horizon)
    fast = FASTTokenizer.fit(chunks.reshape(-1, *chunks.shape[2:]), vocab_size=config.fast_vocab_size)

    def first_step_moves(scale):
        torch.manual_seed(0)
        model = KIVLA(config, fast_tokenizer=fast, norm_stats=stats)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        sampler = ReachActionSampler(data, config, model.text_tokenizer, fast, stats)
        train_stage(model, sampler, StageConfig(recipe="ki", steps=1, batch_size=4, lr=1e-3, warmup_steps=1,
                                                vision_lr_scale=scale))
        moved = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters()}
        vision = torch.cat([d.flatten() for n, d in moved.items() if ".vision_tower." in n])
        text = torch.cat([d.flatten() for n, d in moved.items() if ".language_model." in n])
        return vision, text

    vision, text = first_step_moves(0.1)
    ratio = vision.max().item() / text.max().item()
    assert 0.09 < ratio < 0.11, ratio
    vision, text = first_step_moves(0.0)
    assert vision.max().item() == 0.0 and text.max().item() > 5e-4
    with pytest.raises(ValueError, match="vision_lr_scale=-1"):
        first_step_moves(-1.0)


def test_the_recorded_reproduce_command_parses_back_to_the_same_recipe():
    """demo_metrics.json's `reproduce` line, fed to the CLI, asks for the recipe that was run."""
    import argparse
    import dataclasses
    import shlex

    from experiments.commands import add_demo_checkpoint_options, demo_checkpoint_kwargs
    from experiments.demo_checkpoint import DEMO_DAGGER, DEMO_SIZE, DaggerSettings, reproduce_command

    other_tokenizer = "byte" if DEMO_SIZE.text_tokenizer == "sentencepiece" else "sentencepiece"
    size = dataclasses.replace(DEMO_SIZE, vla_steps=5048, batch_size=32, vision_lr_scale=0.1,
                               vision_pretrain_steps=DEMO_SIZE.vision_pretrain_steps + 100,
                               where_weight=DEMO_SIZE.where_weight + 0.5,
                               point_pretrain_steps=DEMO_SIZE.point_pretrain_steps + 7, text_tokenizer=other_tokenizer,
                               demo_action_noise_rad=DEMO_SIZE.demo_action_noise_rad + 0.25)
    options = dict(device="cuda", recipe="joint", vlm_scenes=500, point_questions=False)
    dagger = DaggerSettings(rounds=DEMO_DAGGER.rounds + 1, steps=DEMO_DAGGER.steps + 3,
                            lr_scale=DEMO_DAGGER.lr_scale / 2, max_lead_steps=DEMO_DAGGER.max_lead_steps + 1)
    command = reproduce_command(size, {"image_size": 64}, dagger, **options)
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    add_demo_checkpoint_options(parser)
    words = shlex.split(command)
    assert words[:4] == ["python", "-m", "experiments", "make-demo-checkpoint"], command
    kwargs = demo_checkpoint_kwargs(parser.parse_args(words[4:]))
    assert {k: kwargs[k] for k in options} == options
    assert kwargs["steps"] == 5048
    assert kwargs["size_overrides"] == {"batch_size": 32, "vision_lr_scale": 0.1,
                                        "vision_pretrain_steps": DEMO_SIZE.vision_pretrain_steps + 100,
                                        "where_weight": DEMO_SIZE.where_weight + 0.5,
                                        "point_pretrain_steps": DEMO_SIZE.point_pretrain_steps + 7,
                                        "text_tokenizer": other_tokenizer,
                                        "demo_action_noise_rad": DEMO_SIZE.demo_action_noise_rad + 0.25}
    assert kwargs["model_overrides"] == {"image_size": 64}
    assert kwargs["dagger_overrides"] == dataclasses.asdict(dagger)
    assert "--dagger" not in reproduce_command(DEMO_SIZE, None, DEMO_DAGGER)


# ------------------------------------------------------------------ DAgger
def test_reach_data_extended_keeps_each_text_sample_on_its_own_scene(data):
    more = generate_reach_data(SINGLE_ARM, [11, 12], image_size=32)
    both = data.extended(more)
    assert both.num_episodes == 6 and both.seeds == data.seeds + [11, 12]
    np.testing.assert_array_equal(both.images[4:], more.images)
    np.testing.assert_array_equal(both.actions[:4], data.actions)
    assert both.instructions[4:] == more.instructions
    for sample in both.text_samples[len(data.text_samples):]:
        assert both.scene_names[sample.episode] == more.scene_names[sample.episode - 4]
    with pytest.raises(ValueError, match="cannot append single_arm episodes of images"):
        data.extended(generate_reach_data(SINGLE_ARM, [11], image_size=32, steps=3))


def test_dagger_settings_reject_bad_values():
    from experiments.demo_checkpoint import DaggerSettings

    for field, bad in (("rounds", -1), ("steps", 2.5), ("max_lead_steps", True)):
        with pytest.raises(ValueError, match=f"DaggerSettings.{field} is {bad!r}; expected an integer >= 0"):
            DaggerSettings(**{field: bad})
    for bad in (0.0, float("nan")):
        with pytest.raises(ValueError, match="DaggerSettings.lr_scale is"):
            DaggerSettings(lr_scale=bad)


def test_a_dagger_round_trains_on_episodes_the_model_itself_led(tmp_path):
    """dagger(): the checkpoint drives each training scene for a seeded number of steps, the
    expert demonstrates from there, and the model trained on demonstrations + those episodes
    is written out; each round's lead-in lengths repeat."""
    import dataclasses

    from experiments.demo_checkpoint import (DEMO_SIZE, DaggerSettings, dagger,
                                             policy_lead_in)
    from experiments.study import new_model, prepare_data

    size = dataclasses.replace(DEMO_SIZE, train_episodes=3, eval_episodes=1, batch_size=4)
    data = prepare_data("single_arm", size)
    new_model(data, seed=0).save_pretrained(tmp_path / "start")
    predictor = Predictor.from_pretrained(str(tmp_path / "start"), device="cpu")

    def lead_steps(round_index):
        lead, times = policy_lead_in(predictor, round_index, max_lead_steps=12), []
        for seed in range(6):
            robot, task = start_reach_episode(SINGLE_ARM, seed)
            times.append(lead(seed, robot, task))
            assert robot.time_s <= times[-1] + 1e-9  # the expert's first step is not in the past
        return times

    first = lead_steps(0)
    assert first == lead_steps(0) and first != lead_steps(1)
    assert all(0 <= t <= 12 * SINGLE_ARM.chunk.step_duration_s + 1e-9 for t in first)
    assert len(set(first)) > 1

    logs = []
    records = dagger(tmp_path / "start", tmp_path / "out", DaggerSettings(rounds=1, steps=3, max_lead_steps=10),
                     size, demos=data.train, text_data=data.train, log=logs.append, snapshot_dir=tmp_path / "snaps")
    assert [(r["round"], r["episodes_added"], r["aggregate_episodes"]) for r in records] == [(1, 3, 6)]
    assert np.isfinite(records[0]["final_losses"]["total"])
    assert any("round 1/1" in line for line in logs)
    before = Predictor.from_pretrained(str(tmp_path / "start"), device="cpu").model.state_dict()
    after = Predictor.from_pretrained(str(tmp_path / "out"), device="cpu").model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "snaps" / "round_1" / "model.safetensors").is_file()


def test_with_delta_actions_the_study_trains_on_offsets_that_add_back_to_the_demonstration(tmp_path):
    """StudySize.delta_actions: the joint dims of every training chunk are offsets from the
    chunk's start state (a chunk that holds still is all zeros in radians), FAST and the norm
    stats are fitted on them, and a saved checkpoint predicts absolute targets again."""
    import dataclasses

    from ki_vla_ros.model.normalize import to_absolute, unnormalize
    from experiments.demo_checkpoint import DEMO_SIZE
    from experiments.study import new_model, prepare_data

    size = dataclasses.replace(DEMO_SIZE, train_episodes=4, eval_episodes=1, text_tokenizer="byte", delta_actions=True)
    data = prepare_data("single_arm", size)
    assert data.config.delta_action_dims == tuple(range(8))
    model = new_model(data, seed=0)
    sampler = ReachActionSampler(data.train, data.config, model.text_tokenizer, data.fast, data.norm_stats)
    stats = data.norm_stats["actions"]
    back = to_absolute(unnormalize(sampler.chunks, stats), data.train.state, data.config.delta_action_dims)
    np.testing.assert_allclose(back, action_chunks(data.train.actions, data.config.action_horizon), atol=1e-5)
    last = unnormalize(sampler.chunks[:, -1], stats)  # the expert has arrived and holds still
    np.testing.assert_allclose(last, 0.0, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert Predictor.from_pretrained(str(tmp_path), device="cpu").config.delta_action_dims == tuple(range(8))


def test_dagger_from_rejects_a_directory_without_weights_and_settings_of_skipped_stages(tmp_path):
    from experiments.demo_checkpoint import make_demo_checkpoint

    with pytest.raises(FileNotFoundError, match="is not a checkpoint directory; expected model.safetensors"):
        make_demo_checkpoint(tmp_path / "out", dagger_from=tmp_path)
    with pytest.raises(ValueError, match="model_overrides and time_budget_s belong to the stages it skips"):
        make_demo_checkpoint(tmp_path / "out", dagger_from=DEMO_CHECKPOINT_DIR, model_overrides={"image_size": 64})
    assert not (tmp_path / "out").exists()
