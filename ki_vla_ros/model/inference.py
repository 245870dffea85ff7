"""Predictor: the one object the runtime and the ROS nodes call; numpy in, robot units out.

Observation -> model input, the same steps as training and replay (preprocess.py, normalize.py):

    camera i   HxWx3 uint8 RGB (any size) -> resize_with_pad(S) -> [-1, 1]    None -> masked camera
    state [D]  -> quantile normalize -> 256 bins -> "Task: {task}, State: {bins};\\nAction: " -> tokens

and back: model actions [H, 32] (normalized, padded) -> first action_dim columns -> unnormalize.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np
import torch

from .config import KIVLAConfig
from .network import KIVLA, ModelInputs, batch_prompts
from .normalize import NormStats, normalize, to_absolute, to_delta, unnormalize
from .precision import DTYPES as _DTYPES
from .preprocess import (check_image, check_state, clean_task_text, discretize_state, format_prompt,
                         preprocess_image, preprocess_image_torch)
from .rtc import ChunkGuidance
from .sampler import COMPILE_MODES, ChunkSampler


def format_subtask_prompt(task: str) -> str:
    """Prompt whose continuation is the next subtask (planner): "Task: {task}. Subtask: "."""
    return f"Task: {clean_task_text(task)}. Subtask: "


def prepare_images(images: Sequence[np.ndarray | None], num_cameras: int, size: int,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera images (HxWx3 uint8 RGB, any size; None = missing) -> [1, N_cam, 3, S, S], masks [1, N_cam].

    device None: resize on the CPU with OpenCV; else on that device with torch (the uint8 frames
    are uploaded, then resized there: same result within one uint8 level, preprocess.py).
    """
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
        raise ValueError(f"images is a {type(images).__name__}; expected a sequence of {num_cameras} "
                         f"HxWx3 uint8 arrays (None for a missing camera)")
    if len(images) != num_cameras:
        raise ValueError(f"images has {len(images)} entries; expected num_cameras={num_cameras} "
                         f"(None for a missing camera)")
    pixels = torch.zeros(1, num_cameras, 3, size, size, device=device)
    masks = torch.zeros(1, num_cameras, dtype=torch.bool, device=device)
    for i, img in enumerate(images):
        if img is not None:
            img = check_image(img, name=f"images[{i}]")
            pixels[0, i] = preprocess_image(img, size) if device is None else \
                preprocess_image_torch(torch.from_numpy(img).to(device), size)
            masks[0, i] = True
    if not masks.any():
        raise ValueError(f"all {num_cameras} images are None; expected at least one camera image")
    return pixels, masks


def prepare_inputs(images: Sequence[np.ndarray | None], state: np.ndarray, task: str, *, config: KIVLAConfig,
                   text_tokenizer, state_stats: NormStats,
                   image_device: torch.device | str | None = None) -> ModelInputs:
    """The documented way from numpy to a one-sample ModelInputs (B = 1) for sample_actions.

    state: [state_stats.dim] in robot units; task: the instruction (or the planner's subtask);
    image_device: where the images are resized (None: CPU with OpenCV; see prepare_images).
    """
    pixels, masks = prepare_images(images, config.num_cameras, config.image_size, image_device)
    state = check_state(state, expected_dim=state_stats.dim)
    bins = discretize_state(normalize(state, state_stats), config.state_bins)
    tokens, token_masks = batch_prompts(text_tokenizer, [format_prompt(task, bins)], config.max_token_len)
    return ModelInputs(images=pixels, image_masks=masks, tokens=tokens, token_masks=token_masks)


def stack_inputs(inputs: Sequence[ModelInputs]) -> ModelInputs:
    """B one-sample ModelInputs -> one batch [B, ...]; prompts right-padded to the longest (masked)."""
    length = max(i.tokens.shape[1] for i in inputs)

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

    return ModelInputs(images=torch.cat([i.images for i in inputs]),
                       image_masks=torch.cat([i.image_masks for i in inputs]),
                       tokens=torch.cat([pad(i.tokens, 0) for i in inputs]),
                       token_masks=torch.cat([pad(i.token_masks.bool(), False) for i in inputs]))


class Predictor:
    """A loaded KIVLA with its tokenizer and norm stats; thread-safe (one call at a time)."""

    def __init__(self, model: KIVLA, *, compile: str = "off", cuda_graph: bool = False):
        """compile ("off", "default", "max-autotune") and cuda_graph (CUDA only): see sampler.py."""
        stats = model.norm_stats or {}
        missing = [k for k in ("state", "actions") if k not in stats]
        if missing:
            raise ValueError(f"model has no norm stats for {missing}; expected norm_stats.json with 'state' and "
                             f"'actions' next to the weights")
        if model.text_tokenizer is None:
            raise ValueError("model has no text tokenizer; expected tokenizer.model (PaliGemma SentencePiece) "
                             "or text_tokenizer.json next to the weights")
        c = model.config
        if stats["actions"].dim > c.action_dim:
            raise ValueError(f"action norm stats have {stats['actions'].dim} dims; the model predicts "
                             f"{c.action_dim} (config.action_dim)")
        self.model = model.eval()
        self.config = c
        self.state_stats, self.action_stats = stats["state"], stats["actions"]
        self.num_cameras = c.num_cameras
        self.state_dim = self.state_stats.dim
        self.action_dim = self.action_stats.dim
        self.horizon = c.action_horizon
        if c.delta_action_dims and max(c.delta_action_dims) >= self.state_dim:
            raise ValueError(f"config.delta_action_dims {list(c.delta_action_dims)} pair action dims with state dims, "
                             f"but the state has {self.state_dim} dims")
        self.device = str(model.device)
        # Static shapes (prompt padded to max_token_len) only when a fast path needs them.
        static_shapes = compile != "off" or cuda_graph
        self._sampler = ChunkSampler(model, compile=compile, cuda_graph=cuda_graph) if static_shapes \
            else model.sample_actions
        # Resize-with-pad where the model runs: on a GPU the frames are uploaded as uint8 instead.
        self._image_device = model.device if model.device.type == "cuda" else None
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path: str, device: str = "auto", dtype: str = "auto", *, compile: str = "off",
                        cuda_graph: bool = False) -> "Predictor":
        """device: "auto" (cuda when available), "cpu", "cuda", "cuda:1"; dtype: "auto" (bfloat16 on
        cuda, float32 on cpu), "float32", "bfloat16" (openpi's precision policy, precision.py),
        "float16"; compile: "off", "default", "max-autotune"; cuda_graph: replay each chunk as one
        CUDA graph (CUDA only). The first calls compile / capture: call warmup() before real use."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        if dtype not in _DTYPES:
            raise ValueError(f"dtype is {dtype!r}; expected 'auto' or one of {sorted(_DTYPES)}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile is {compile!r}; expected one of {list(COMPILE_MODES)}")
        if cuda_graph and not str(device).startswith("cuda"):
            raise ValueError(f"cuda_graph is true but device is {device!r}; CUDA graphs need a CUDA device "
                             f"(set cuda_graph: false, or device: cuda)")
        return cls(KIVLA.from_pretrained(path, device=device, dtype=_DTYPES[dtype]), compile=compile,
                   cuda_graph=cuda_graph)

    @classmethod
    def tiny_random(cls, state_dim: int, action_dim: int, num_cameras: int, seed: int = 0, *,
                    compile: str = "off", cuda_graph: bool = False) -> "Predictor":
        """Tiny preset with random weights and identity-ish norm stats (robot units ~ [-1, 1]), on the CPU."""
        config = KIVLAConfig.preset("tiny", num_cameras=num_cameras, action_dim=max(32, action_dim))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = KIVLA(config)
        model.norm_stats = {"state": NormStats.identity(state_dim), "actions": NormStats.identity(action_dim)}
        return cls(model, compile=compile, cuda_graph=cuda_graph)

    def _noise(self, noise: np.ndarray | None) -> torch.Tensor | None:
        if noise is None:
            return None
        noise = np.asarray(noise, dtype=np.float32)
        full = (self.horizon, self.config.action_dim)
        if noise.shape == (self.horizon, self.action_dim) and self.action_dim < full[1]:
            noise = np.concatenate([noise, np.zeros((self.horizon, full[1] - self.action_dim), np.float32)], 1)
        if noise.shape != full:
            raise ValueError(f"noise has shape {noise.shape}; expected {full} or {(self.horizon, self.action_dim)}")
        if not np.isfinite(noise).all():
            raise ValueError("noise contains NaN or inf; expected finite values")
        return torch.from_numpy(noise)[None]

    def predict_chunk(self, images: Sequence[np.ndarray | None], state: np.ndarray, prompt: str,
                      noise: np.ndarray | None = None, previous_actions: np.ndarray | None = None,
                      inference_delay_steps: int = 0) -> np.ndarray:
        """One action chunk [horizon, action_dim] float32 in robot units (un-normalized).

        images: num_cameras entries, HxWx3 uint8 RGB of any size, None = missing camera;
        state: [state_dim] in robot units; prompt: the task; noise: [horizon, D] for reproducibility.
        previous_actions: real-time chunking (model/rtc.py): [K, action_dim] in robot units, the
        running chunk at this chunk's step times (K <= horizon: the steps it still covers);
        inference_delay_steps: how many of them run before this chunk can. None: no guidance.
        """
        inputs = prepare_inputs(images, state, prompt, config=self.config, text_tokenizer=self.model.text_tokenizer,
                                state_stats=self.state_stats, image_device=self._image_device)
        noise_t = self._noise(noise)
        guidance = None if previous_actions is None else \
            self.guidance(previous_actions, state, inference_delay_steps)
        # The guidance differentiates the expert: inference_mode tensors cannot enter autograd.
        with self._lock, torch.inference_mode(guidance is None):
            actions = self._sampler(inputs.to(self.model.device), noise=noise_t, guidance=guidance)
        return self.to_robot_units(actions[0].float().cpu().numpy(), state)

    def predict_chunks(self, observations: Sequence[tuple[Sequence[np.ndarray | None], np.ndarray, str]],
                       noise: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """Several (images, state, prompt) observations in one forward pass (batch B = len) ->
        per observation [horizon, action_dim] float32 in robot units, as predict_chunk gives it
        (up to batched-kernel rounding). Prompts are right-padded to the longest (masked)."""
        if not observations:
            return []
        noise = list(noise) if noise is not None else [None] * len(observations)
        inputs = [prepare_inputs(images, state, prompt, config=self.config, text_tokenizer=self.model.text_tokenizer,
                                 state_stats=self.state_stats, image_device=self._image_device)
                  for images, state, prompt in observations]
        batch = stack_inputs(inputs)
        c = self.config
        noise_t = torch.cat([self._noise(n) if n is not None else torch.randn(1, c.action_horizon, c.action_dim)
                             for n in noise])
        with self._lock, torch.inference_mode():
            actions = self._sampler(batch.to(self.model.device), noise=noise_t)
        actions = actions.float().cpu().numpy()
        return [self.to_robot_units(actions[i], state) for i, (_, state, _) in enumerate(observations)]

    def guidance(self, previous_actions: np.ndarray, state: np.ndarray, delay_steps: int) -> ChunkGuidance:
        """The running chunk [K, action_dim] in robot units -> RTC guidance in model units [1, H, D]
        (relative to `state` for config.delta_action_dims, normalized, zero-padded)."""
        previous = np.asarray(previous_actions, dtype=np.float32)
        if previous.ndim != 2 or previous.shape[1] != self.action_dim or not 1 <= previous.shape[0] <= self.horizon:
            raise ValueError(f"previous_actions has shape {previous.shape}; expected [K, {self.action_dim}] with "
                             f"1 <= K <= horizon {self.horizon}")
        if not np.isfinite(previous).all():
            raise ValueError("previous_actions contains NaN or inf; expected finite robot-unit actions")
        if isinstance(delay_steps, bool) or not isinstance(delay_steps, (int, np.integer)) or delay_steps < 0:
            raise ValueError(f"inference_delay_steps is {delay_steps!r}; expected an integer >= 0")
        model_units = normalize(to_delta(previous, state, self.config.delta_action_dims), self.action_stats)
        padded = np.zeros((self.horizon, self.config.action_dim), np.float32)
        padded[: previous.shape[0], : self.action_dim] = model_units
        return ChunkGuidance(torch.from_numpy(padded)[None].to(self.model.device), int(delay_steps),
                             previous.shape[0])

    def to_robot_units(self, normalized: np.ndarray, state: np.ndarray) -> np.ndarray:
        """A model chunk [horizon, >= action_dim] (normalized, padded) -> [horizon, action_dim]
        float32 in robot units: un-normalized, and config.delta_action_dims offset by `state`."""
        actions = unnormalize(np.asarray(normalized)[:, : self.action_dim], self.action_stats)
        return to_absolute(actions, state, self.config.delta_action_dims)

    def generate_subtask(self, images: Sequence[np.ndarray | None], task: str, max_new_tokens: int = 24) -> str:
        """The next subtask as text, greedy-decoded by the backbone from the images and the task."""
        pixels, masks = prepare_images(images, self.num_cameras, self.config.image_size, self._image_device)
        tokens, token_masks = batch_prompts(self.model.text_tokenizer, [format_subtask_prompt(task)],
                                            self.config.max_token_len)
        inputs = ModelInputs(images=pixels, image_masks=masks, tokens=tokens, token_masks=token_masks)
        with self._lock, torch.inference_mode():
            ids = self.model.generate_text(inputs.to(self.model.device), max_new_tokens)[0]
        return self.model.text_tokenizer.decode(ids).strip()

    def prompt_tokens(self, task: str) -> tuple[int, int]:
        """(tokens the action prompt for `task` takes at most, max_token_len): the state text is
        counted at its longest (every bin three digits), so a task that fits here always fits."""
        widest_state = format_prompt(task, np.full(self.state_dim, self.config.state_bins - 1))
        return len(self.model.text_tokenizer.encode(widest_state, add_bos=True)), self.config.max_token_len

    def warmup(self) -> float:
        """Run each path once so the first real call does not pay for lazy initialization;
        returns the seconds of the last (warm) chunk."""
        s = self.config.image_size
        images = [np.zeros((s, s, 3), np.uint8)] * self.num_cameras
        state = self.state_stats.mean.astype(np.float64)
        for _ in range(2):
            t0 = time.perf_counter()
            self.predict_chunk(images, state, "warm up")
            chunk_s = time.perf_counter() - t0
        self.generate_subtask(images, "warm up", max_new_tokens=2)
        return chunk_s
