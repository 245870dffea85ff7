"""Everything a training run needs besides the loop: model, norm stats, FAST, samplers.

    prepare_run(data_dir, train_config, init="tiny" | checkpoint dir, vlm_data=None)

- model: `--resume` with OUT/last present -> that checkpoint (with the norm stats and FAST
  tokenizer it was trained with); init "tiny" -> the tiny preset sized for the dataset (enough
  image slots and action dims), seeded; otherwise KIVLA.from_pretrained(init) (e.g. π0.5).
- norm stats and FAST: the dataset's, fitted and written into it when missing (rank 0 writes,
  the other ranks wait and read); the model carries them so its checkpoints are self-contained.
  A model with delta_action_dims (e.g. the demo checkpoint) gets them fitted on offset chunks.
- samplers: robot samples from the dataset; VLM samples from --vlm-data (or the dataset's own
  vlm.jsonl) when vlm_ratio > 0, or when vlm_ratio is None (the default: the KI recipe co-trains
  whenever there is VLM data; the trainer then uses DEFAULT_VLM_RATIO).
- LoRA resume: the merged weights in OUT/last cannot give back the frozen base exactly, so the
  model is rebuilt from the run's init (config.init, saved with the run) and the trainer loads
  everything else and the adapters from OUT/last.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.model.checkpoint import load_checkpoint_fast_tokenizer, load_checkpoint_norm_stats
from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.model.text_tokenizer import ByteTokenizer
from ki_vla_ros.model.normalize import normalize
from ki_vla_ros.runtime.config import default_delta_action_dims
from ki_vla_ros.train.batching import ActionChunkSampler, VLMSampler
from ki_vla_ros.train.dataset import EpisodeDataset, ensure_fast_tokenizer, ensure_norm_stats
from ki_vla_ros.train.distributed import DistContext, barrier, init_distributed
from ki_vla_ros.train.trainer import LAST_DIR, TRAINER_STATE_JSON, TrainConfig, read_trainer_state

_FAST_LENGTH_SAMPLE = 2000  # chunks checked against max_target_len


@dataclasses.dataclass
class TrainingRun:
    model: KIVLA
    dataset: EpisodeDataset
    action_sampler: ActionChunkSampler | None
    vlm_sampler: VLMSampler | None
    context: DistContext


def tiny_config_for(dataset: EpisodeDataset, **overrides) -> KIVLAConfig:
    """The tiny preset with enough image slots and action dims for this dataset, and a
    max_target_len that fits its longest VLM answer (+ EOS), so no answer loses its end."""
    slots = max(dataset.camera_slots.values()) + 1
    base = KIVLAConfig.preset("tiny")
    byte_tokenizer = ByteTokenizer(base.vocab_size)
    longest_answer = max((len(byte_tokenizer.encode(row["answer"], add_bos=False)) + 1
                          for row in dataset.vlm_samples()), default=0)
    fitted = dict(num_cameras=max(base.num_cameras, slots), action_dim=max(base.action_dim, len(dataset.action_names)),
                  max_target_len=max(base.max_target_len, longest_answer))
    return KIVLAConfig.preset("tiny", **{**fitted, **overrides})


def build_model(init: str, dataset: EpisodeDataset, seed: int = 0) -> KIVLA:
    if init == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return KIVLA(tiny_config_for(dataset))
    if not Path(init).is_dir():
        raise FileNotFoundError(f"--init is {init!r}; expected 'tiny' or a checkpoint directory")
    return KIVLA.from_pretrained(init)


def delta_action_dims(choice: str, dataset: EpisodeDataset) -> tuple[int, ...]:
    """--delta-actions: "none", "joints" (default_delta_action_dims of the dataset's names) or
    comma-separated action names -> increasing action dims."""
    if choice == "none":
        return ()
    if choice == "joints":
        return default_delta_action_dims(dataset.state_names, dataset.action_names)
    names = [n.strip() for n in choice.split(",") if n.strip()]
    unknown = [n for n in names if n not in dataset.action_names]
    if unknown or not names:
        raise ValueError(f"--delta-actions names {unknown or choice!r}; expected 'none', 'joints' or action names "
                         f"of dataset {dataset.root}: {list(dataset.action_names)}")
    return tuple(sorted(dataset.action_names.index(n) for n in names))


def check_fits(model: KIVLA, dataset: EpisodeDataset) -> None:
    c = model.config
    slots = max(dataset.camera_slots.values()) + 1
    if slots > c.num_cameras or len(dataset.action_names) > c.action_dim:
        raise ValueError(f"dataset {dataset.root} needs {slots} image slots and {len(dataset.action_names)} "
                         f"action dims; the model has num_cameras={c.num_cameras}, action_dim={c.action_dim}")


def prepare_run(data_dir, config: TrainConfig, *, init: str | None = None, vlm_data=None) -> TrainingRun:
    """init: "tiny" or a checkpoint directory; None = config.init (a given init is recorded there)."""
    if init is not None:
        config.init = init
    ctx = init_distributed(config.device)
    dataset = EpisodeDataset.open(data_dir)
    last = Path(config.out_dir or "") / LAST_DIR
    resumed = config.resume and config.out_dir is not None and (last / TRAINER_STATE_JSON).is_file()
    if resumed and read_trainer_state(last)["train_config"].get("lora_rank"):
        saved = read_trainer_state(last)["train_config"]
        if saved["init"] != "tiny" and not Path(saved["init"]).is_dir():
            raise FileNotFoundError(f"resume: the LoRA run in {config.out_dir} started from --init {saved['init']!r}, "
                                    f"which is gone; its frozen base weights are needed to resume exactly")
        model = build_model(saved["init"], dataset, saved["seed"])
        model.norm_stats, model.fast_tokenizer = load_checkpoint_norm_stats(last), load_checkpoint_fast_tokenizer(last)
    else:
        model = KIVLA.from_pretrained(last) if resumed else build_model(config.init, dataset, config.seed)
    check_fits(model, dataset)
    if config.delta_actions is not None:
        dims = delta_action_dims(config.delta_actions, dataset)
        if resumed and dims != model.config.delta_action_dims:
            raise ValueError(f"--delta-actions {config.delta_actions!r} gives dims {list(dims)}, but the run being "
                             f"resumed predicts {list(model.config.delta_action_dims)} as offsets")
        model.config = dataclasses.replace(model.config, delta_action_dims=dims)
    c = model.config
    model.data_layout = dataset.data_layout()

    delta = c.delta_action_dims
    dataset.check_delta_dims(delta)
    if not (resumed and model.norm_stats):
        if ctx.is_main:
            ensure_norm_stats(dataset)  # the dataset's own (absolute) stats file, written once
        barrier(ctx)
        model.norm_stats = ensure_norm_stats(dataset, c.action_horizon, delta)
    if config.recipe != "pi0" and not (resumed and model.fast_tokenizer is not None):
        if ctx.is_main:
            ensure_fast_tokenizer(dataset, c.action_horizon, c.fast_vocab_size, delta, model.norm_stats)
        barrier(ctx)
        model.fast_tokenizer = ensure_fast_tokenizer(dataset, c.action_horizon, c.fast_vocab_size, delta,
                                                     model.norm_stats)
        _check_fast_lengths(model, dataset)

    vlm_dataset = EpisodeDataset.open(vlm_data) if vlm_data else dataset
    co_train = config.vlm_ratio > 0.0 if config.vlm_ratio is not None else \
        config.recipe != "pi0" and bool(vlm_dataset.vlm_samples())
    action_sampler = None
    if config.vlm_ratio is None or config.vlm_ratio < 1.0:
        action_sampler = ActionChunkSampler(dataset, c, model.text_tokenizer, model.fast_tokenizer,
                                            model.norm_stats, c.action_horizon, seed=config.seed)
    vlm_sampler = None
    if co_train:
        vlm_sampler = VLMSampler.from_dataset(vlm_dataset, c, model.text_tokenizer)
    return TrainingRun(model, dataset, action_sampler, vlm_sampler, ctx)


def _check_fast_lengths(model: KIVLA, dataset: EpisodeDataset) -> None:
    """Warn when FAST sequences of this data often exceed max_target_len (their CE is skipped)."""
    c, fast = model.config, model.fast_tokenizer
    chunks = normalize(dataset.chunks(c.action_horizon, c.delta_action_dims), model.norm_stats["actions"])
    pick = np.random.default_rng(0).choice(len(chunks), min(len(chunks), _FAST_LENGTH_SAMPLE), replace=False)
    lengths = np.array([len(fast.encode(chunks[i])) + 1 for i in pick])  # + EOS
    too_long = float((lengths > c.max_target_len).mean())
    if too_long > 0.01:
        warnings.warn(f"{too_long:.1%} of FAST action sequences (+ EOS) are longer than max_target_len="
                      f"{c.max_target_len} (longest {lengths.max()}); their cross-entropy is skipped. Raise "
                      f"max_target_len or the FAST vocabulary size", stacklevel=2)
