"""Training batches: the inference preprocessing, normalized padded chunks, FAST and VQA targets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ki_vla_ros.model.inference import prepare_inputs
from ki_vla_ros.model.normalize import normalize
from ki_vla_ros.train.batching import ActionChunkSampler, VLMSampler, collate, format_question_prompt
from ki_vla_ros.train.prepare import prepare_run
from ki_vla_ros.train.trainer import TrainConfig


class _FixedRng:
    """A Generator stand-in that picks a given frame (integers) and draws the rest normally."""

    def __init__(self, frame: int, seed: int = 0):
        self.frame, self._rng = frame, np.random.default_rng(seed)

    def integers(self, high):
        return self.frame

    def __getattr__(self, name):
        return getattr(self._rng, name)


def _run(sim_dataset_dir, vlm_ratio=0.5):
    return prepare_run(sim_dataset_dir, TrainConfig(batch_size=2, vlm_ratio=vlm_ratio, progress=False))


def test_a_robot_sample_is_what_inference_sees_plus_the_normalized_chunk(sim_dataset_dir, sim_dataset):
    run = _run(sim_dataset_dir)
    model, sampler = run.model, run.action_sampler
    frame = 20 + 17  # episode 1, step 17: the chunk runs past the episode's end (20 steps)
    example = sampler.example(_FixedRng(frame))

    images = sim_dataset.frame_images(1, 17)
    state, actions = sim_dataset.state_actions(1)
    live = prepare_inputs([images["base"], images["wrist"]], state[17], sim_dataset.instruction(1),
                          config=model.config, text_tokenizer=model.text_tokenizer,
                          state_stats=model.norm_stats["state"])
    assert torch.equal(example.images, live.images[0]) and torch.equal(example.image_masks, live.image_masks[0])
    assert example.prompt == live.tokens[0][live.token_masks[0]].tolist()

    expected = normalize(actions[[17, 18, 19, 19, 19, 19, 19, 19, 19, 19]], model.norm_stats["actions"])
    np.testing.assert_allclose(example.actions[:, :8], expected, atol=1e-6)
    assert example.actions.shape == (10, 32) and not example.actions[:, 8:].any()  # padded to action_dim

    fast = model.fast_tokenizer
    fast_ids = fast.from_backbone_ids(example.target[:-1], model.config.vocab_size)
    np.testing.assert_allclose(fast.decode(fast_ids, 10, 8), expected, atol=np.sqrt(10) * 0.5 / fast.scale)
    assert example.target[-1] == model.text_tokenizer.eos_id and all(example.loss_mask)


def test_a_vqa_sample_has_no_actions_and_trains_only_on_its_answer(sim_dataset_dir):
    run = _run(sim_dataset_dir)
    tok = run.model.text_tokenizer
    example = run.vlm_sampler.example(np.random.default_rng(3))
    question = tok.decode(example.prompt)
    assert question.startswith("Question: ") and question.endswith("\nAnswer: ")
    answer = tok.decode(example.target)
    assert any(answer == row["answer"] and format_question_prompt(row["question"]) == question
               for row in run.dataset.vlm_samples())
    assert not example.has_actions and all(example.loss_mask)
    assert example.image_masks.all()


def test_a_batch_is_a_pure_function_of_the_generators(sim_dataset_dir):
    run = _run(sim_dataset_dir)
    a = run.action_sampler.sample(3, np.random.default_rng(7))
    b = run.action_sampler.sample(3, np.random.default_rng(7))
    for name in ("images", "tokens", "target_tokens", "actions", "noise", "time"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.time.min() > 0 and a.time.max() <= 1


def test_mixed_batches_pad_each_sample_and_mask_the_padding(sim_dataset_dir):
    run = _run(sim_dataset_dir)
    rngs = np.random.default_rng(0).spawn(2)
    batch = collate([run.action_sampler.example(rngs[0]), run.vlm_sampler.example(rngs[1])],
                    run.action_sampler.pad_id)
    assert batch.has_actions.tolist() == [True, False]
    assert not batch.actions[1].any()
    for tokens, masks in ((batch.tokens, batch.token_masks), (batch.target_tokens, batch.target_masks)):
        assert (tokens[~masks] == run.action_sampler.pad_id).all()
    assert not (batch.target_loss_masks & ~batch.target_masks).any()
    losses = run.model.compute_loss(batch, "ki")
    assert torch.isfinite(losses["total"])


def test_images_given_to_a_vlm_sampler_go_to_their_slots(sim_dataset_dir):
    run = _run(sim_dataset_dir, vlm_ratio=0.0)
    image = np.full((20, 30, 3), 200, np.uint8)
    sampler = VLMSampler([(image, "what color?", "gray")], run.model.config, run.model.text_tokenizer)
    example = sampler.example(np.random.default_rng(0))
    assert example.image_masks.tolist() == [True, False]
    assert isinstance(run.action_sampler, ActionChunkSampler)


def test_an_answer_longer_than_the_target_budget_keeps_its_beginning_without_eos(sim_dataset_dir):
    run = _run(sim_dataset_dir, vlm_ratio=0.0)
    c, tok = run.model.config, run.model.text_tokenizer
    long_answer = "from left to right: " + ", ".join(["red block"] * 10)
    with pytest.warns(UserWarning, match=f"1 of 2 VLM answers are longer than max_target_len={c.max_target_len}"):
        sampler = VLMSampler([(np.zeros((8, 8, 3), np.uint8), "describe the scene", long_answer),
                              (np.zeros((8, 8, 3), np.uint8), "how many?", "two")], c, tok)
    targets = {tok.decode(sampler.example(np.random.default_rng(s)).target) for s in range(8)}
    assert targets == {long_answer[: c.max_target_len], "two"}


def test_a_model_with_delta_action_dims_trains_on_offsets_from_the_frame_state(sim_dataset_dir, tmp_path):
    """--init from a checkpoint whose config has delta_action_dims (the demo checkpoint's):
    the chunks, their norm stats and FAST are the offsets from the frame's state; the dataset's
    own norm_stats.json keeps the absolute stats."""
    import shutil

    from ki_vla_ros.model.network import KIVLA
    from ki_vla_ros.train.dataset import DatasetError, EpisodeDataset, compute_norm_stats
    from ki_vla_ros.train.prepare import tiny_config_for

    data = tmp_path / "data"
    shutil.copytree(sim_dataset_dir, data)
    dataset = EpisodeDataset.open(data)
    absolute = dataset.norm_stats()
    KIVLA(tiny_config_for(dataset, delta_action_dims=(0, 1, 3))).save_pretrained(tmp_path / "init")
    run = prepare_run(data, TrainConfig(batch_size=2, progress=False), init=str(tmp_path / "init"))
    example = run.action_sampler.example(_FixedRng(20 + 17))
    state, actions = dataset.state_actions(1)
    chunk = actions[[17, 18, 19, 19, 19, 19, 19, 19, 19, 19]].copy()
    chunk[:, [0, 1, 3]] -= state[17, [0, 1, 3]]
    stats = run.model.norm_stats["actions"]
    np.testing.assert_allclose(example.actions[:, :8], normalize(chunk, stats), atol=1e-5)
    want = compute_norm_stats(dataset, horizon=10, delta_dims=(0, 1, 3))["actions"]
    np.testing.assert_allclose(stats.q99, want.q99)
    assert not np.allclose(stats.q99, absolute["actions"].q99)
    np.testing.assert_array_equal(EpisodeDataset.open(data).norm_stats()["actions"].q99, absolute["actions"].q99)

    KIVLA(tiny_config_for(dataset, delta_action_dims=(0, 20))).save_pretrained(tmp_path / "bad")
    with pytest.raises(DatasetError, match=r"action dim 20 as an offset from state dim 20, but dataset .* has "
                                           r"action None and state None there"):
        prepare_run(data, TrainConfig(batch_size=2, progress=False), init=str(tmp_path / "bad"))
