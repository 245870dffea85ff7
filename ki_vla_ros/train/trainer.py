"""The training loop: the KI recipe's losses, AdamW, warm-up + cosine, clipping, exact resume.

One step, as in the paper (the recipe's loss terms live in KIVLA.compute_loss):

    batch      = global batch of B slots; slot k is VLM co-training data when floor((k+1) r) > floor(k r)
                 (r = vlm_ratio, spread evenly), else a robot sample; slot k is drawn from a numpy
                 Generator seeded by (seed, step, k), so a batch depends on nothing but those three
    losses     = model.compute_loss(batch, recipe)  ->  ce (backbone), flow (expert; KI: stop-gradient)
    total      = ce + alpha * flow  (ki, joint)  |  flow  (pi0)  |  ce  (fast)
    update     = AdamW(lr = warm-up then cosine to 10%), gradients clipped to grad_clip_norm

Checkpoints (out_dir/checkpoint_<step>/ and out_dir/last/) are model directories that
`KIVLA.from_pretrained` / `Predictor.from_pretrained` / the policy node load as they are, plus

    trainer_state.safetensors   optimizer tensors "optimizer.<param index>.<name>", RNG states
                                "rng.torch" (torch.get_rng_state(), uint8), "rng.cuda.<i>"
    trainer_state.json          step, the TrainConfig, optimizer param groups, numpy and python
                                RNG states as JSON (no pickle anywhere)

Resuming from out_dir/last continues bit-exactly: same batches (they depend only on seed, step
and slot), same torch RNG stream (reseeded per step from (seed, step, rank)), same optimizer
state and learning rate. Metrics go to out_dir/metrics.csv (one row per logged step).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ki_vla_ros.model.checkpoint import respect_umask
from ki_vla_ros.model.config import RECIPES
from ki_vla_ros.model.network import KIVLA, TrainingBatch
from ki_vla_ros.train.batching import collate
from ki_vla_ros.train.distributed import (
    DistContext, all_reduce_sum, barrier, broadcast_flag, init_distributed, shard_slots)
from ki_vla_ros.train.schedule import learning_rate

TRAINER_STATE_TENSORS = "trainer_state.safetensors"
TRAINER_STATE_JSON = "trainer_state.json"
METRICS_FILE = "metrics.csv"
LAST_DIR = "last"
METRIC_COLUMNS = ("step", "lr", "total", "ce", "flow", "grad_norm", "seconds", "steps_per_s")
_STATE_FORMAT = "ki_vla_trainer_state/1"
_TIED_HEAD = "backbone.lm_head.weight"


@dataclasses.dataclass
class TrainConfig:
    recipe: str = "ki"  # "ki" | "joint" | "pi0" | "fast" (KIVLA.compute_loss)
    steps: int = 1000  # optimizer updates in the whole run (the schedule's length)
    batch_size: int = 32  # global batch: all ranks together
    lr: float = 3e-4  # peak learning rate (tiny from scratch; fine-tuning π0.5 wants ~2.5e-5)
    weight_decay: float = 1e-10  # AdamW, decoupled (openpi's value: effectively none)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    final_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
    grad_clip_norm: float = 1.0  # <= 0: no clipping (the norm is still logged)
    vlm_ratio: float = 0.0  # fraction of each batch drawn from VLM co-training data
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # checkpoint every N steps; 0 = only at the end (and on stop / Ctrl-C)
    keep_checkpoints: int = 0  # keep the newest N checkpoint_<step> dirs; 0 = all (last/ is always kept)
    out_dir: str | None = None  # None: no files (metrics are still returned)
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK when there is a GPU), "cpu", "cuda", "cuda:1"
    amp: str = "auto"  # "auto" (bf16 autocast on cuda, off on cpu), "bf16", "off"
    flow_loss_weight: float | None = None  # alpha; None = the model config's flow_loss_weight
    # action dims predicted as offsets from the state (KIVLAConfig.delta_action_dims): None = the
    # init model's; "none"; "joints" (runtime.config.default_delta_action_dims: grippers stay
    # absolute); or comma-separated action names
    delta_actions: str | None = None
    resume: bool = False  # continue from out_dir/last when it exists
    progress: bool = True  # tqdm progress bar (rank 0)
    prefetch: bool = True  # build the next batch in a background thread while this one trains

    def __post_init__(self):
        self.betas = tuple(self.betas)
        problems = []
        if self.recipe not in RECIPES:
            problems.append(f"recipe is {self.recipe!r}; expected one of {list(RECIPES)}")
        for name in ("steps", "batch_size", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                problems.append(f"{name} is {getattr(self, name)!r}; expected a positive integer")
        for name in ("warmup_steps", "save_every", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                problems.append(f"{name} is {getattr(self, name)!r}; expected an integer >= 0")
        if not 0.0 <= self.vlm_ratio <= 1.0:
            problems.append(f"vlm_ratio is {self.vlm_ratio}; expected a fraction in [0, 1]")
        if not self.lr > 0 or self.weight_decay < 0:
            problems.append(f"lr is {self.lr} and weight_decay {self.weight_decay}; expected lr > 0, decay >= 0")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            problems.append(f"final_lr_ratio is {self.final_lr_ratio}; expected a fraction in [0, 1]")
        if self.amp not in ("auto", "bf16", "off"):
            problems.append(f"amp is {self.amp!r}; expected 'auto', 'bf16' or 'off'")
        if self.flow_loss_weight is not None and self.flow_loss_weight < 0:
            problems.append(f"flow_loss_weight is {self.flow_loss_weight}; expected >= 0 or None")
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def is_vlm_slot(slot: int, vlm_ratio: float) -> bool:
    """Whether slot k of every global batch holds VLM data: round(r * B) slots, spread evenly,
    independent of how the batch is split over ranks."""
    return math.floor((slot + 1) * vlm_ratio + 1e-9) > math.floor(slot * vlm_ratio + 1e-9)


def slot_generator(seed: int, step: int, slot: int) -> np.random.Generator:
    """The generator that draws slot `slot` of batch `step` (0-based)."""
    return np.random.default_rng([seed, step, slot])


class BatchBuilder:
    """Builds this rank's shard of the batch of any step; a pure function of (seed, step, slot)."""

    def __init__(self, config: TrainConfig, slots: range, action_sampler, vlm_sampler):
        self.seed, self.slots = config.seed, slots
        self.vlm = [is_vlm_slot(k, config.vlm_ratio) for k in slots]
        n_vlm_global = sum(is_vlm_slot(k, config.vlm_ratio) for k in range(config.batch_size))
        if n_vlm_global and vlm_sampler is None:
            raise ValueError(f"vlm_ratio is {config.vlm_ratio} ({n_vlm_global} of {config.batch_size} samples per "
                             f"batch) but there is no VLM sampler; pass vlm_sampler (--vlm-data)")
        if n_vlm_global < config.batch_size and action_sampler is None:
            raise ValueError(f"vlm_ratio is {config.vlm_ratio}, so batches hold robot samples, but "
                             f"action_sampler is None")
        if config.vlm_ratio > 0 and n_vlm_global == 0:
            warnings.warn(f"vlm_ratio {config.vlm_ratio} * batch_size {config.batch_size} rounds to 0 VLM "
                          f"samples per batch; raise the batch size or the ratio", stacklevel=3)
        self.action_sampler, self.vlm_sampler = action_sampler, vlm_sampler
        self.pad_id = (action_sampler or vlm_sampler).pad_id

    def __call__(self, step: int) -> TrainingBatch:
        examples = []
        for slot, vlm in zip(self.slots, self.vlm):
            sampler = self.vlm_sampler if vlm else self.action_sampler
            examples.append(sampler.example(slot_generator(self.seed, step, slot)))
        return collate(examples, self.pad_id)


class _RecipeLoss(nn.Module):
    """model.compute_loss(batch, recipe) as a forward(), so DDP can see the backward coming."""

    def __init__(self, model: KIVLA, recipe: str):
        super().__init__()
        self.model, self.recipe = model, recipe

    def forward(self, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        return self.model.compute_loss(batch, self.recipe)


def combine(recipe: str, ce: torch.Tensor, flow: torch.Tensor, alpha: float) -> torch.Tensor:
    """The recipe's total loss from its terms: ce + alpha * flow (ki, joint), flow (pi0), ce (fast)."""
    if recipe == "pi0":
        return flow
    if recipe == "fast":
        return ce
    return ce + alpha * flow


def _counts(batch: TrainingBatch) -> torch.Tensor:
    """float64 [2]: cross-entropy tokens and flow samples in this shard (the losses' denominators)."""
    ce_tokens = (batch.target_loss_masks & batch.target_masks).sum()
    return torch.stack([ce_tokens, batch.has_actions.sum()]).double()


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and params[0].is_cuda
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
                             eps=1e-8, fused=fused or None)


def _amp_context(config: TrainConfig, device: torch.device):
    enabled = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG for one step on one rank (used only if a sampler leaves noise to torch)."""
    return int(np.random.SeedSequence([seed, step, rank, 0x70C4]).generate_state(1, np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------- train
def train(model: KIVLA, config: TrainConfig, action_sampler=None, vlm_sampler=None, *,
          callback: Callable[[int, dict, KIVLA], Any] | None = None) -> list[dict]:
    """Train `model` in place; returns the metrics of every logged step of this call.

    action_sampler / vlm_sampler: objects with `example(rng) -> Example` and `pad_id`
    (batching.ActionChunkSampler / VLMSampler). callback(step, metrics, model) runs on rank 0
    after every logged step with the model in eval mode; returning True stops training (a
    checkpoint is written first). Ctrl-C also writes out_dir/last before it propagates.
    """
    ctx = init_distributed(config.device)
    alpha = model.config.flow_loss_weight if config.flow_loss_weight is None else config.flow_loss_weight
    if config.recipe == "pi0" and config.vlm_ratio > 0:
        warnings.warn("recipe 'pi0' trains on the flow loss only; its VLM samples add no gradient", stacklevel=2)
    out_dir = Path(config.out_dir) if config.out_dir else None
    builder = BatchBuilder(config, shard_slots(config.batch_size, ctx), action_sampler, vlm_sampler)

    model.to(ctx.device)
    model.train()
    optimizer = make_optimizer(model, config)
    start_step = 0
    if config.resume:
        if out_dir is None:
            raise ValueError("resume is set but out_dir is None; expected the directory of the run to continue")
        if (out_dir / LAST_DIR / TRAINER_STATE_JSON).is_file():
            start_step = load_trainer_state(out_dir / LAST_DIR, model, optimizer, config)
        elif ctx.is_main:
            warnings.warn(f"resume: {out_dir / LAST_DIR} has no trainer state; starting from step 0", stacklevel=2)
    runner: nn.Module = _RecipeLoss(model, config.recipe)
    if ctx.distributed:
        # pi0 never runs the backbone's head and final norm, fast never runs the expert.
        runner = nn.parallel.DistributedDataParallel(
            runner, device_ids=None, find_unused_parameters=config.recipe in ("pi0", "fast"))

    log = MetricsLog(out_dir / METRICS_FILE, start_step) if (out_dir and ctx.is_main) else None
    bar = tqdm(total=config.steps, initial=start_step, disable=not (config.progress and ctx.is_main),
               desc=f"train {config.recipe}", dynamic_ncols=True)
    pool = concurrent.futures.ThreadPoolExecutor(1) if config.prefetch else None
    pending = pool.submit(builder, start_step) if pool and start_step < config.steps else None
    history: list[dict] = []
    sums = torch.zeros(3, dtype=torch.float64)  # ce, flow, grad_norm since the last log
    n_summed, t_start, t_log = 0, time.perf_counter(), time.perf_counter()
    step = start_step
    try:
        while step < config.steps:
            batch = pending.result() if pending else builder(step)
            pending = pool.submit(builder, step + 1) if pool and step + 1 < config.steps else None
            lr = learning_rate(step, peak_lr=config.lr, warmup_steps=config.warmup_steps,
                               total_steps=config.steps, final_ratio=config.final_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(_step_seed(config.seed, step, ctx.rank))

            local = _counts(batch)
            share = local / all_reduce_sum(local, ctx).clamp(min=1.0)  # this shard's part of each mean
            with _amp_context(config, ctx.device):
                losses = runner(batch.to(ctx.device))
            ce, flow = losses["ce"].float() * share[0].item(), losses["flow"].float() * share[1].item()
            loss = combine(config.recipe, ce, flow, alpha) * ctx.world_size  # DDP averages over ranks
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip = config.grad_clip_norm if config.grad_clip_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            step += 1
            sums += torch.tensor([ce.item(), flow.item(), 0.0], dtype=torch.float64)
            sums[2] += grad_norm.item() / ctx.world_size  # identical on every rank after the all-reduce
            n_summed += 1
            bar.update(1)

            stop = False
            if step % config.log_every == 0 or step == config.steps:
                mean = all_reduce_sum(sums, ctx) / n_summed
                now = time.perf_counter()
                metrics = {"step": step, "lr": lr, "total": float(combine(config.recipe, mean[0], mean[1], alpha)),
                           "ce": float(mean[0]), "flow": float(mean[1]), "grad_norm": float(mean[2]),
                           "seconds": now - t_start, "steps_per_s": n_summed / max(now - t_log, 1e-9)}
                sums.zero_()
                n_summed, t_log = 0, now
                history.append(metrics)
                if ctx.is_main:
                    bar.set_postfix(ce=f"{metrics['ce']:.3f}", flow=f"{metrics['flow']:.3f}", lr=f"{lr:.1e}")
                    if log:
                        log.write(metrics)
                    if callback is not None:
                        model.eval()
                        stop = bool(callback(step, metrics, model))
                        model.train()
                stop = broadcast_flag(stop, ctx)
            if out_dir and (stop or step == config.steps or (config.save_every and step % config.save_every == 0)):
                save_checkpoint(out_dir, model, optimizer, step, config, ctx)
            if stop:
                break
    except KeyboardInterrupt:
        if out_dir and step > start_step:
            save_checkpoint(out_dir, model, optimizer, step, config, ctx, numbered=False)
        raise
    finally:
        bar.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        if log:
            log.close()
    model.eval()
    return history


# ----------------------------------------------------------------------------- metrics file
class MetricsLog:
    """out_dir/metrics.csv; on resume, rows after the resumed step (logged but never saved) are dropped."""

    def __init__(self, path: Path, start_step: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if start_step > 0 and path.is_file():
            with path.open(newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(float(row["step"])) <= start_step]
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(kept)
        self._file.flush()

    def write(self, metrics: dict) -> None:
        self._writer.writerow(metrics)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(out_dir: Path, model: KIVLA, optimizer: torch.optim.Optimizer, step: int,
                    config: TrainConfig, ctx: DistContext | None = None, numbered: bool = True) -> Path:
    """Write out_dir/checkpoint_<step>/ (when numbered) and out_dir/last/; rank 0 writes, all wait."""
    ctx = ctx or DistContext()
    target = out_dir / (f"checkpoint_{step:06d}" if numbered else LAST_DIR)
    if ctx.is_main:
        _write_dir_atomically(target, lambda d: _write_checkpoint(d, model, optimizer, step, config))
        if numbered:
            _write_dir_atomically(out_dir / LAST_DIR, lambda d: _link_tree(target, d))
            if config.keep_checkpoints:
                old = sorted(out_dir.glob("checkpoint_*"))[: -config.keep_checkpoints]
                for path in old:
                    shutil.rmtree(path, ignore_errors=True)
    barrier(ctx)
    return target


def _write_dir_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then swap it in, so a crash mid-save never leaves a half-written `last/`."""
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    for path in (tmp, old):
        shutil.rmtree(path, ignore_errors=True)
    write(tmp)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _link_tree(src: Path, dst: Path) -> None:
    """dst = src's files as hard links (no second copy of the weights), copies where links fail."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        try:
            os.link(path, dst / path.name)
        except OSError:
            shutil.copy2(path, dst / path.name)


def _write_checkpoint(directory: Path, model: KIVLA, optimizer: torch.optim.Optimizer, step: int,
                      config: TrainConfig) -> None:
    model.save_pretrained(directory)
    opt = optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    scalars: dict[str, dict] = {}
    for index, state in opt["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    save_file(tensors, str(directory / TRAINER_STATE_TENSORS), metadata={"format": _STATE_FORMAT})
    respect_umask(directory / TRAINER_STATE_TENSORS)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]]
    np_state = np.random.get_state(legacy=False)
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "format": _STATE_FORMAT, "step": step, "train_config": config.to_dict(),
        "optimizer": {"param_groups": groups, "scalar_state": scalars},
        "rng": {"numpy": {"bit_generator": np_state["bit_generator"],
                          "key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"]),
                          "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
                "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss}},
    }
    (directory / TRAINER_STATE_JSON).write_text(json.dumps(state) + "\n")


def load_trainer_state(directory: Path, model: KIVLA, optimizer: torch.optim.Optimizer,
                       config: TrainConfig) -> int:
    """Restore weights, optimizer state and RNG states from a checkpoint; returns its step."""
    json_path, tensor_path = directory / TRAINER_STATE_JSON, directory / TRAINER_STATE_TENSORS
    try:
        state = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"trainer state {json_path} cannot be read: {e}") from e
    if state.get("format") != _STATE_FORMAT:
        raise ValueError(f"trainer state {json_path} has format {state.get('format')!r}; expected {_STATE_FORMAT!r}")
    saved = state["train_config"]
    if saved["recipe"] != config.recipe:
        raise ValueError(f"resume: {directory} was trained with recipe {saved['recipe']!r}; this run asks for "
                         f"{config.recipe!r} (use a new --out directory to change recipes)")
    changed = {k: (saved[k], v) for k, v in config.to_dict().items()
               if k in ("steps", "batch_size", "lr", "seed", "vlm_ratio", "warmup_steps") and saved.get(k) != v}
    if changed:
        warnings.warn(f"resume: settings differ from the saved run {changed} (saved, now); the continuation "
                      f"will not match an uninterrupted run", stacklevel=3)
    try:
        tensors = load_file(str(tensor_path))
        weights = load_file(str(directory / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {directory} cannot be read (corrupt or truncated?): {e}") from e

    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if k != _TIED_HEAD]
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint {directory} does not fit the model: missing {missing[:10]}, "
                         f"unexpected {result.unexpected_keys[:10]}")
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for index, values in state["optimizer"]["scalar_state"].items():
        opt_state.setdefault(int(index), {}).update(values)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
              for g in state["optimizer"]["param_groups"]]
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})

    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    rng = state["rng"]
    np.random.set_state((rng["numpy"]["bit_generator"], np.array(rng["numpy"]["key"], dtype=np.uint32),
                         rng["numpy"]["pos"], rng["numpy"]["has_gauss"], rng["numpy"]["gauss"]))
    random.setstate((rng["python"]["version"], tuple(rng["python"]["internal"]), rng["python"]["gauss_next"]))
    return int(state["step"])
