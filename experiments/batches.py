"""TrainingBatch samplers over ReachData; each has `sample(batch_size, rng) -> TrainingBatch`.

    ReachActionSampler  (images at step t, "Task: {instruction}, State: {bins};\\nAction: ")
                        -> normalized chunk actions[t : t + H] and its FAST tokens as target
    TextSampler         (frame-0 images, a VQA / caption / subtask prompt) -> answer text,
                        no actions (has_actions False: no flow loss)
    MixedSampler        a fixed fraction of each batch from a TextSampler (VLM co-training)

Images go through the same steps as inference (resize_with_pad was applied when the data
was generated; here uint8 -> [-1, 1]), and prompts through format_prompt.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.network import TrainingBatch
from ki_vla_ros.model.normalize import NormStats, normalize, to_delta
from ki_vla_ros.model.preprocess import discretize_state, format_prompt
from experiments.tasks import ReachData, TextSample, action_chunks


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., S, S, 3] -> float32 [..., 3, S, S] in [-1, 1] (preprocess.image_to_tensor, batched)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    return x.movedim(-1, -3).float() / 255.0 * 2.0 - 1.0


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest -> ids [B, L] long, mask [B, L] bool."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def fit_norm_stats(data: ReachData, horizon: int = 1, delta_dims: Sequence[int] = ()) -> dict[str, NormStats]:
    """State stats over every step; action stats over every action (absolute), or, with
    delta_dims, over every entry of every horizon-step chunk with those dims as offsets from
    the chunk's start state (what the model predicts)."""
    actions = data.actions
    if len(delta_dims):
        actions = to_delta(action_chunks(data.actions, horizon), data.state, delta_dims)
    return {"state": NormStats.from_data(data.state.reshape(-1, data.state.shape[-1])),
            "actions": NormStats.from_data(actions.reshape(-1, actions.shape[-1]))}


def normalized_chunks(data: ReachData, norm_stats: dict[str, NormStats], horizon: int,
                      delta_dims: Sequence[int] = ()) -> np.ndarray:
    """[E, T, H, Da] normalized action chunks (delta_dims as offsets from the chunk's start state)."""
    return normalize(to_delta(action_chunks(data.actions, horizon), data.state, delta_dims), norm_stats["actions"])


def check_first_step_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"first_step_fraction is {fraction}; expected a fraction in [0, 1]")


class ReachActionSampler:
    def __init__(self, data: ReachData, config: KIVLAConfig, text_tokenizer, fast_tokenizer,
                 norm_stats: dict[str, NormStats], first_step_fraction: float = 0.0):
        """first_step_fraction: this share of sampled chunks start at step 0, where only the
        image and the instruction say where to go (the rest start at a uniform step)."""
        check_first_step_fraction(first_step_fraction)
        self.first_step_fraction = float(first_step_fraction)
        if data.actions.shape[-1] > config.action_dim:
            raise ValueError(f"data has {data.actions.shape[-1]} action dims; the model predicts "
                             f"{config.action_dim} (config.action_dim)")
        self.data, self.config = data, config
        self.tok, self.fast = text_tokenizer, fast_tokenizer
        self.chunks = normalized_chunks(data, norm_stats, config.action_horizon,
                                        config.delta_action_dims)  # [E, T, H, Da]
        bins = discretize_state_batch(normalize(data.state, norm_stats["state"]), config.state_bins)
        self._bins = bins  # [E, T, Ds]
        self._prompt_cache: dict[tuple[int, int], list[int]] = {}
        self._fast_cache: dict[tuple[int, int], list[int]] = {}

    def prompt_ids(self, e: int, t: int) -> list[int]:
        key = (e, t)
        if key not in self._prompt_cache:
            text = format_prompt(self.data.instructions[e], self._bins[e, t])
            self._prompt_cache[key] = self.tok.encode(text, add_bos=True)
        return self._prompt_cache[key]

    def target_ids(self, e: int, t: int) -> list[int]:
        """FAST tokens of the chunk as backbone ids, then EOS (only needed by CE recipes)."""
        key = (e, t)
        if key not in self._fast_cache:
            ids = self.fast.to_backbone_ids(self.fast.encode(self.chunks[e, t]), self.config.vocab_size)
            self._fast_cache[key] = ids + [self.tok.eos_id]
        return self._fast_cache[key]

    def batch_at(self, index: Sequence[tuple[int, int]]) -> TrainingBatch:
        """The samples (episode, step) in this order."""
        c = self.config
        e_idx = np.array([e for e, _ in index])
        t_idx = np.array([t for _, t in index])
        images = images_to_tensor(self.data.images[e_idx, t_idx])  # [B, N_cam, 3, S, S]
        tokens, token_masks = pad_sequences([self.prompt_ids(e, t) for e, t in index], self.tok.pad_id)
        targets = [self.target_ids(e, t) for e, t in index] if self.fast is not None else \
            [[self.tok.eos_id]] * len(index)
        target_tokens, target_masks = pad_sequences(targets, self.tok.pad_id)
        actions = torch.zeros(len(index), c.action_horizon, c.action_dim)
        da = self.chunks.shape[-1]
        actions[:, :, :da] = torch.from_numpy(self.chunks[e_idx, t_idx])
        return TrainingBatch(images=images, image_masks=torch.ones(images.shape[:2], dtype=torch.bool),
                             tokens=tokens, token_masks=token_masks, target_tokens=target_tokens,
                             target_masks=target_masks, target_loss_masks=target_masks.clone(),
                             actions=actions, has_actions=torch.ones(len(index), dtype=torch.bool))

    def sample(self, batch_size: int, rng: np.random.Generator) -> TrainingBatch:
        e = rng.integers(self.data.num_episodes, size=batch_size)
        t = rng.integers(self.data.steps, size=batch_size)
        if self.first_step_fraction:
            t = np.where(rng.random(batch_size) < self.first_step_fraction, 0, t)
        return self.batch_at(list(zip(e.tolist(), t.tolist())))


class TextSampler:
    def __init__(self, data: ReachData, config: KIVLAConfig, text_tokenizer, samples: Sequence[TextSample]):
        if not samples:
            raise ValueError("TextSampler got no text samples; expected VQA / caption / subtask samples")
        self.data, self.config, self.tok, self.samples = data, config, text_tokenizer, list(samples)

    def batch_at(self, samples: Sequence[TextSample]) -> TrainingBatch:
        c = self.config
        e_idx = np.array([s.episode for s in samples])
        images = images_to_tensor(self.data.images[e_idx, 0])
        tokens, token_masks = pad_sequences([self.tok.encode(s.prompt, add_bos=True) for s in samples],
                                            self.tok.pad_id)
        targets = [(self.tok.encode(s.answer, add_bos=False) + [self.tok.eos_id])[: c.max_target_len]
                   for s in samples]
        target_tokens, target_masks = pad_sequences(targets, self.tok.pad_id)
        b = len(samples)
        return TrainingBatch(images=images, image_masks=torch.ones(images.shape[:2], dtype=torch.bool),
                             tokens=tokens, token_masks=token_masks, target_tokens=target_tokens,
                             target_masks=target_masks, target_loss_masks=target_masks.clone(),
                             actions=torch.zeros(b, c.action_horizon, c.action_dim),
                             has_actions=torch.zeros(b, dtype=torch.bool))

    def sample(self, batch_size: int, rng: np.random.Generator) -> TrainingBatch:
        idx = rng.integers(len(self.samples), size=batch_size)
        return self.batch_at([self.samples[i] for i in idx])


class MixedSampler:
    """round(text_fraction * B) text samples, the rest action samples, in one batch."""

    def __init__(self, actions: ReachActionSampler, text: TextSampler | None, text_fraction: float):
        if not 0.0 <= text_fraction < 1.0:
            raise ValueError(f"text_fraction is {text_fraction}; expected a value in [0, 1)")
        self.actions, self.text = actions, text
        self.text_fraction = text_fraction if text is not None else 0.0

    def sample(self, batch_size: int, rng: np.random.Generator) -> TrainingBatch:
        n_text = int(round(self.text_fraction * batch_size))
        a = self.actions.sample(batch_size - n_text, rng)
        return concat_batches(a, self.text.sample(n_text, rng)) if n_text else a


def concat_batches(a: TrainingBatch, b: TrainingBatch, pad_id: int = 0) -> TrainingBatch:
    """Stack two batches along B, right-padding token tensors to the longer length."""
    def cat_tokens(x, y, fill):
        n = max(x.shape[1], y.shape[1])
        def pad(t):
            return torch.nn.functional.pad(t, (0, n - t.shape[1]), value=fill)
        return torch.cat([pad(x), pad(y)])

    return TrainingBatch(
        images=torch.cat([a.images, b.images]), image_masks=torch.cat([a.image_masks, b.image_masks]),
        tokens=cat_tokens(a.tokens, b.tokens, pad_id), token_masks=cat_tokens(a.token_masks, b.token_masks, False),
        target_tokens=cat_tokens(a.target_tokens, b.target_tokens, pad_id),
        target_masks=cat_tokens(a.target_masks, b.target_masks, False),
        target_loss_masks=cat_tokens(a.target_loss_masks, b.target_loss_masks, False),
        actions=torch.cat([a.actions, b.actions]), has_actions=torch.cat([a.has_actions, b.has_actions]))


def discretize_state_batch(state_norm: np.ndarray, num_bins: int) -> np.ndarray:
    """preprocess.discretize_state over [..., D] (same bins, vectorized)."""
    flat = state_norm.reshape(-1, state_norm.shape[-1])
    return np.stack([discretize_state(row, num_bins) for row in flat]).reshape(state_norm.shape)
