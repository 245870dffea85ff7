"""Training samples -> TrainingBatch, through the same preprocessing as inference.

One robot sample (ActionChunkSampler), frame t of an episode:

    images     camera frames at t -> model slots -> inference.prepare_images (resize_with_pad, [-1, 1])
    prompt     "Task: {instruction}, State: {bins};\\nAction: "  (state normalized, 256 bins: prepare_inputs' path)
    actions    actions[t : t + H] (last action repeated past the episode's end: the robot holds its
               final target) -> quantile-normalized [H, Da] -> zero-padded to [H, config.action_dim]
    targets    FAST ids of the normalized [H, Da] chunk, mapped into the backbone vocabulary, + EOS
    noise, t   flow-matching noise [H, D] ~ N(0, 1) and time ~ Beta(1.5, 1) * 0.999 + 0.001

One VLM co-training sample (VLMSampler): the images, the prompt "Question: {q}\\nAnswer: ", the answer
tokens + EOS as targets (cross-entropy only), no actions (has_actions False). An answer longer than
max_target_len keeps its beginning without EOS (warned once).

Each sample is drawn from its own numpy Generator, so a batch is a pure function of the
generators it was given: the trainer hands every slot of the global batch a generator
derived from (seed, step, slot), which makes resumed and data-parallel runs see exactly
the samples a single uninterrupted run sees.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch

from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.fast import FASTTokenizer
from ki_vla_ros.model.inference import prepare_images
from ki_vla_ros.model.network import TrainingBatch
from ki_vla_ros.model.normalize import NormStats, normalize, to_delta
from ki_vla_ros.model.preprocess import clean_task_text, discretize_state, format_prompt
from ki_vla_ros.train.dataset import EpisodeDataset, action_chunks


def format_question_prompt(question: str) -> str:
    """The VLM prompt whose continuation is the answer: "Question: {q}\\nAnswer: "."""
    return f"Question: {clean_task_text(question)}\nAnswer: "


@dataclasses.dataclass
class Example:
    """One training sample before collation (N = config.num_cameras, H = horizon, D = config.action_dim)."""

    images: torch.Tensor  # [N, 3, S, S] float in [-1, 1]
    image_masks: torch.Tensor  # [N] bool
    prompt: list[int]  # backbone ids, BOS first
    target: list[int]  # backbone ids after the prompt, EOS last
    loss_mask: list[bool]  # per target id: counts toward the cross-entropy
    actions: np.ndarray  # [H, D] float32 normalized (zeros without actions)
    has_actions: bool
    noise: np.ndarray  # [H, D] float32
    time: float  # flow time in (0, 1]


def collate(examples: Sequence[Example], pad_id: int) -> TrainingBatch:
    """Examples -> one TrainingBatch; prompts and targets right-padded to the longest in the batch."""
    if not examples:
        raise ValueError("collate got no examples; expected at least one")
    b = len(examples)

    def pad(seqs: Sequence[Sequence], fill, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """-> values [B, longest] (fill after each sequence) and mask [B, longest] (True = real)."""
        length = max(len(s) for s in seqs)
        values = torch.full((b, length), fill, dtype=dtype)
        mask = torch.zeros(b, length, dtype=torch.bool)
        for i, seq in enumerate(seqs):
            values[i, : len(seq)] = torch.tensor(list(seq), dtype=dtype)
            mask[i, : len(seq)] = True
        return values, mask

    tokens, token_masks = pad([e.prompt for e in examples], pad_id, torch.long)
    target_tokens, target_masks = pad([e.target for e in examples], pad_id, torch.long)
    loss_masks, _ = pad([e.loss_mask for e in examples], False, torch.bool)
    return TrainingBatch(
        images=torch.stack([e.images for e in examples]),
        image_masks=torch.stack([e.image_masks for e in examples]),
        tokens=tokens, token_masks=token_masks,
        target_tokens=target_tokens, target_masks=target_masks, target_loss_masks=loss_masks & target_masks,
        actions=torch.from_numpy(np.stack([e.actions for e in examples])),
        has_actions=torch.tensor([e.has_actions for e in examples], dtype=torch.bool),
        noise=torch.from_numpy(np.stack([e.noise for e in examples])),
        time=torch.tensor([e.time for e in examples], dtype=torch.float32),
    )


def flow_noise_and_time(rng: np.random.Generator, horizon: int, action_dim: int) -> tuple[np.ndarray, float]:
    """Noise [H, D] ~ N(0, 1) and t ~ Beta(1.5, 1) * 0.999 + 0.001 (π0), from this sample's generator."""
    noise = rng.standard_normal((horizon, action_dim)).astype(np.float32)
    return noise, float(rng.beta(1.5, 1.0) * 0.999 + 0.001)


class _Sampler:
    """Shared by both samplers: tokenizer checks, image slots, the `sample` entry point."""

    def __init__(self, model_config: KIVLAConfig, text_tokenizer, seed: int = 0):
        if text_tokenizer is None:
            raise ValueError("text_tokenizer is None; expected the model's text tokenizer (model.text_tokenizer)")
        self.config = model_config
        self.text_tokenizer = text_tokenizer
        self.pad_id = int(text_tokenizer.pad_id)
        self._rng = np.random.default_rng(seed)

    def example(self, rng: np.random.Generator) -> Example:
        raise NotImplementedError

    def examples(self, rngs: Sequence[np.random.Generator]) -> list[Example]:
        return [self.example(rng) for rng in rngs]

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> TrainingBatch:
        """A batch of batch_size samples, each from its own child of rng (default: the sampler's
        own stream, seeded by `seed`)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size is {batch_size}; expected a positive number of samples")
        return collate(self.examples((rng or self._rng).spawn(batch_size)), self.pad_id)

    def _images(self, by_slot: Mapping[int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """{slot: HxWx3 uint8} -> images [N, 3, S, S], masks [N] (missing slots masked)."""
        c = self.config
        slots = [by_slot.get(k) for k in range(c.num_cameras)]
        pixels, masks = prepare_images(slots, c.num_cameras, c.image_size)
        return pixels[0], masks[0]

    def _prompt(self, text: str) -> list[int]:
        ids = self.text_tokenizer.encode(text, add_bos=True)
        if len(ids) > self.config.max_token_len:
            raise ValueError(f"prompt {text!r} is {len(ids)} tokens; the model's max_token_len is "
                             f"{self.config.max_token_len} (shorten the text or raise max_token_len)")
        return ids

    def _check_slots(self, camera_slots: Mapping[str, int]) -> None:
        too_high = {c: s for c, s in camera_slots.items() if s >= self.config.num_cameras}
        if too_high:
            raise ValueError(f"camera slots {too_high} do not exist in the model, which has "
                             f"num_cameras={self.config.num_cameras} image slots")


class ActionChunkSampler(_Sampler):
    """Robot samples: a uniformly random frame of the dataset and the action chunk that follows it."""

    def __init__(self, dataset: EpisodeDataset, model_config: KIVLAConfig, text_tokenizer,
                 fast_tokenizer: FASTTokenizer | None, norm_stats: Mapping[str, NormStats],
                 horizon: int | None = None, seed: int = 0):
        super().__init__(model_config, text_tokenizer, seed)
        c = model_config
        self.dataset = dataset
        self.horizon = horizon or c.action_horizon
        if self.horizon != c.action_horizon:
            raise ValueError(f"horizon is {self.horizon}; the model's action_horizon is {c.action_horizon}")
        da = len(dataset.action_names)
        if da > c.action_dim:
            raise ValueError(f"dataset {dataset.root} has {da} action dims; the model predicts at most "
                             f"action_dim={c.action_dim}")
        for key, names in (("state", dataset.state_names), ("actions", dataset.action_names)):
            if key not in norm_stats or norm_stats[key].dim != len(names):
                got = norm_stats[key].dim if key in norm_stats else "no"
                raise ValueError(f"norm_stats '{key}' has {got} dims; dataset {dataset.root} has {len(names)}")
        self._check_slots(dataset.camera_slots)
        self.fast_tokenizer = fast_tokenizer
        self.norm_stats = dict(norm_stats)
        self.eos_id = int(text_tokenizer.eos_id)
        self.too_long_targets = 0  # FAST sequences that did not fit max_target_len (CE skipped on them)
        lengths = dataset.lengths()
        self._episode_of_frame = np.repeat(np.arange(len(lengths)), lengths)
        self._first_frame = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    def example(self, rng: np.random.Generator) -> Example:
        c, ds = self.config, self.dataset
        frame = int(rng.integers(len(self._episode_of_frame)))  # every frame equally likely
        i = int(self._episode_of_frame[frame])
        t = frame - int(self._first_frame[i])
        state, actions = ds.state_actions(i)

        images, image_masks = self._images(
            {ds.camera_slots[cam]: img for cam, img in ds.frame_images(i, t).items()})
        bins = discretize_state(normalize(state[t], self.norm_stats["state"]), c.state_bins)
        prompt = self._prompt(format_prompt(ds.instruction(i), bins))

        chunk = to_delta(action_chunks(actions[t:], self.horizon)[0], state[t], c.delta_action_dims)
        chunk = normalize(chunk, self.norm_stats["actions"])  # [H, Da]
        padded = np.zeros((self.horizon, c.action_dim), np.float32)
        padded[:, : chunk.shape[1]] = chunk
        target, loss_mask = self._fast_target(chunk)
        noise, time = flow_noise_and_time(rng, self.horizon, c.action_dim)
        return Example(images=images, image_masks=image_masks, prompt=prompt, target=target,
                       loss_mask=loss_mask, actions=padded, has_actions=True, noise=noise, time=time)

    def _fast_target(self, chunk: np.ndarray) -> tuple[list[int], list[bool]]:
        """Normalized chunk [H, Da] -> FAST backbone ids + EOS, and their loss mask.

        A sequence longer than max_target_len is not truncated into a wrong action: its
        cross-entropy is switched off (flow loss still counts) and `too_long_targets` counts it.
        """
        if self.fast_tokenizer is None:  # "pi0": no discrete targets; EOS keeps the shapes valid
            return [self.eos_id], [False]
        ids = self.fast_tokenizer.to_backbone_ids(self.fast_tokenizer.encode(chunk), self.config.vocab_size)
        target = ids + [self.eos_id]
        if len(target) > self.config.max_target_len:
            self.too_long_targets += 1
            return target[: self.config.max_target_len], [False] * self.config.max_target_len
        return target, [True] * len(target)


class VLMSampler(_Sampler):
    """VLM co-training samples (question, answer) about images; cross-entropy on the answer only.

    samples: a list of (images, question, answer) with images a {slot: HxWx3 uint8}, a list per
    slot (None = missing) or one HxWx3 array (slot 0); or use `from_dataset` for DIR/vlm.jsonl.
    """

    def __init__(self, samples: Sequence[tuple], model_config: KIVLAConfig, text_tokenizer,
                 horizon: int | None = None, *, seed: int = 0, dataset: EpisodeDataset | None = None):
        super().__init__(model_config, text_tokenizer, seed)
        if not samples:
            raise ValueError("VLMSampler got no samples; expected (images, question, answer) triples "
                             "or a dataset with a vlm.jsonl")
        self.samples = list(samples)
        self.dataset = dataset
        self.horizon = horizon or model_config.action_horizon
        self.eos_id = int(text_tokenizer.eos_id)
        if dataset is not None:
            self._check_slots(dataset.camera_slots)
        self._answers = [self._answer_target(answer) for _, _, answer in self.samples]
        self.truncated_answers = sum(len(t) == model_config.max_target_len and t[-1] != self.eos_id
                                     for t in self._answers)
        if self.truncated_answers:
            warnings.warn(f"{self.truncated_answers} of {len(self.samples)} VLM answers are longer than "
                          f"max_target_len={model_config.max_target_len} tokens; only their beginning is "
                          f"trained (without EOS)", stacklevel=2)

    @classmethod
    def from_dataset(cls, dataset: EpisodeDataset, model_config: KIVLAConfig, text_tokenizer,
                     horizon: int | None = None, seed: int = 0) -> "VLMSampler":
        """Samples from DIR/vlm.jsonl; images are read from the episodes lazily (frame null = any frame)."""
        rows = dataset.vlm_samples()
        if not rows:
            raise ValueError(f"dataset {dataset.root} has no VLM samples; expected a non-empty vlm.jsonl")
        return cls([((r["episode"], r["frame"]), r["question"], r["answer"]) for r in rows], model_config,
                   text_tokenizer, horizon, seed=seed, dataset=dataset)

    def example(self, rng: np.random.Generator) -> Example:
        c = self.config
        index = int(rng.integers(len(self.samples)))
        source, question, _ = self.samples[index]
        images, image_masks = self._images(self._slot_images(source, rng))
        prompt = self._prompt(format_question_prompt(question))
        target = self._answers[index]
        noise, time = flow_noise_and_time(rng, self.horizon, c.action_dim)  # unused; keeps rng use uniform
        return Example(images=images, image_masks=image_masks, prompt=prompt, target=target,
                       loss_mask=[True] * len(target), actions=np.zeros((self.horizon, c.action_dim), np.float32),
                       has_actions=False, noise=noise, time=time)

    def _answer_target(self, answer: str) -> list[int]:
        """Answer ids + EOS; an answer too long for max_target_len keeps its beginning and no EOS
        (a correct prefix to predict, never an end-of-answer in the wrong place)."""
        ids = self.text_tokenizer.encode(answer, add_bos=False) + [self.eos_id]
        return ids if len(ids) <= self.config.max_target_len else ids[: self.config.max_target_len]

    def _slot_images(self, source, rng: np.random.Generator) -> dict[int, np.ndarray]:
        if self.dataset is not None and isinstance(source, tuple) and len(source) == 2 \
                and not isinstance(source[0], np.ndarray):
            episode, frame = source
            if frame is None:
                frame = int(rng.integers(self.dataset.episodes[episode]["length"]))
            images = self.dataset.frame_images(episode, frame)
            return {self.dataset.camera_slots[cam]: img for cam, img in images.items()}
        if isinstance(source, np.ndarray):
            return {0: source}
        if isinstance(source, Mapping):
            return {int(k): v for k, v in source.items() if v is not None}
        return {k: img for k, img in enumerate(source) if img is not None}
