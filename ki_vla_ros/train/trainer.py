"""The training loop: the KI recipe's losses, AdamW, warm-up + cosine, clipping, exact resume.

One step, as in the paper (the recipe's loss terms live in KIVLA.compute_loss):

    batch      = global batch of B slots; slot k is VLM co-training data when floor((k+1) r) > floor(k r)
                 (r = vlm_ratio, spread evenly), else a robot sample; slot k is drawn from a numpy
                 Generator seeded by (seed, step, k), so a batch depends on nothing but those three
    losses     = model.compute_loss(batch, recipe)  ->  ce (backbone), flow (expert; KI: stop-gradient)
    total      = ce + alpha * flow  (ki, joint)  |  flow  (pi0)  |  ce  (fast)
    update     = AdamW(lr = warm-up then cosine to 10%), gradients clipped to grad_clip_norm

Strategies plug into this one loop (distributed.py): single, ddp, fsdp (FSDP2). Each rank's
shard of the batch is split into grad_accum micro-batches; every micro-batch's losses are
weighted by its share of the global batch's CE tokens / flow samples, so the summed gradient
equals that of one large batch whatever the ranks and micro-batches. Options that change which
parameters train or what is stored: activation checkpointing (KIVLA.set_activation_checkpointing),
LoRA adapters and --freeze vision (lora.py), and the vision tower's share of the learning rate
(vision_lr_scale, its own AdamW group). The research harness (experiments/stages.py) trains every
stage of the claims study and the demo checkpoint here too, with its own `batches` function.

Checkpoints (out_dir/checkpoint_<step>/ and out_dir/last/) are model directories that
`KIVLA.from_pretrained` / `Predictor.from_pretrained` / the policy node load as they are, plus

    trainer_state.safetensors   optimizer tensors "optimizer.<parameter name>.<name>", RNG states
                                "rng.torch" (torch.get_rng_state(), uint8), "rng.cuda.<i>", and
                                with LoRA the unmerged adapters "lora.<parameter name>"
    trainer_state.json          step, the TrainConfig, optimizer param groups, numpy and python
                                RNG states as JSON (no pickle anywhere)

Under every strategy the files are consolidated (full tensors, written by rank 0), so one
process can load them and a run can resume under another strategy or world size. With LoRA,
model.safetensors holds the merged weights (W + scale * B A), what inference loads; resuming
rebuilds the frozen base from the run's init (TrainConfig.init) and loads the adapters.

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
    STRATEGIES, DistContext, all_reduce_sum, barrier, broadcast_flag, init_distributed, resolve_strategy,
    shard_model, shard_slots)
from ki_vla_ros.train.lora import (
    FREEZABLE, LORA_TARGETS, adapted_weight_keys, apply_lora, freeze, is_adapter_key, merged_state_dict,
    vision_tower)
from ki_vla_ros.train.schedule import learning_rate

TRAINER_STATE_TENSORS = "trainer_state.safetensors"
TRAINER_STATE_JSON = "trainer_state.json"
METRICS_FILE = "metrics.csv"
LAST_DIR = "last"
METRIC_COLUMNS = ("step", "lr", "total", "ce", "flow", "grad_norm", "seconds", "steps_per_s")
_STATE_FORMAT = "ki_vla_trainer_state/2"
_TIED_HEAD = "backbone.lm_head.weight"
# Share of VLM samples when vlm_ratio is None and VLM data exists (recipes with a CE term): the
# KI recipe's point is that the backbone keeps learning language while the expert learns actions.
DEFAULT_VLM_RATIO = 0.25


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
    # Fraction of each batch drawn from VLM co-training data; None = DEFAULT_VLM_RATIO when there is
    # VLM data and the recipe has a CE term (ki, joint, fast), else 0.
    vlm_ratio: float | None = None
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # checkpoint every N steps; 0 = only at the end (and on stop / Ctrl-C)
    keep_checkpoints: int = 0  # keep the newest N checkpoint_<step> dirs; 0 = all (last/ is always kept)
    out_dir: str | None = None  # None: no files (metrics are still returned)
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK when there is a GPU), "cpu", "cuda", "cuda:1"
    amp: str = "auto"  # "auto" (bf16 autocast on cuda, off on cpu), "bf16", "off"
    # alpha in ce + alpha * flow; None = the model config's (1.0). Under ki each parameter gets gradient
    # from one term only and AdamW is invariant to a constant loss scale, so alpha then changes only
    # how the two terms share the clipping norm; under joint it weighs the terms on the backbone.
    flow_loss_weight: float | None = None
    # action dims predicted as offsets from the state (KIVLAConfig.delta_action_dims): None = the
    # init model's; "none"; "joints" (runtime.config.default_delta_action_dims: grippers stay
    # absolute); or comma-separated action names
    delta_actions: str | None = None
    resume: bool = False  # continue from out_dir/last when it exists
    progress: bool = True  # tqdm progress bar (rank 0)
    prefetch: bool = True  # build the next batch in a background thread while this one trains
    strategy: str = "auto"  # "single" | "ddp" | "fsdp"; auto = ddp under a multi-process launch, else single
    activation_checkpointing: bool = False  # recompute each layer's activations in backward
    grad_accum: int = 1  # micro-batches per rank and step (the batch a step trains on is unchanged)
    lora_rank: int = 0  # > 0: LoRA adapters of this rank on the backbone; the rest of it frozen
    lora_alpha: float | None = None  # adapter scale alpha / rank; None = rank (scale 1)
    lora_targets: tuple[str, ...] = LORA_TARGETS  # projections of each Gemma layer that get adapters
    freeze: tuple[str, ...] = ()  # parts that take no updates: "vision"
    # The vision tower's learning rate as a fraction of lr (its own optimizer group); 0 freezes it
    # (as freeze=("vision",)). A tower pretrained for the task and then trained at the full rate of a
    # small from-scratch backbone can lose what it learned (docs/demo_checkpoint.md).
    vision_lr_scale: float = 1.0
    # True: torch's global RNG is reseeded every step from (seed, step, rank), so a resumed run draws
    # what an uninterrupted one would. False: seeded once with `seed` when training starts, one stream
    # for the whole call (what experiments/ uses; its batches leave flow noise and time to torch).
    reseed_torch_every_step: bool = True
    init: str = "tiny"  # the weights the run started from ("tiny" or a directory); LoRA resume rebuilds its base from it

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.lora_targets, self.freeze = tuple(self.lora_targets), tuple(self.freeze)
        problems = []
        if self.recipe not in RECIPES:
            problems.append(f"recipe is {self.recipe!r}; expected one of {list(RECIPES)}")
        for name in ("steps", "batch_size", "log_every", "grad_accum"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                problems.append(f"{name} is {getattr(self, name)!r}; expected a positive integer")
        for name in ("warmup_steps", "save_every", "keep_checkpoints", "lora_rank"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                problems.append(f"{name} is {getattr(self, name)!r}; expected an integer >= 0")
        if self.vlm_ratio is not None and not 0.0 <= self.vlm_ratio <= 1.0:
            problems.append(f"vlm_ratio is {self.vlm_ratio}; expected a fraction in [0, 1]")
        if not self.lr > 0 or self.weight_decay < 0:
            problems.append(f"lr is {self.lr} and weight_decay {self.weight_decay}; expected lr > 0, decay >= 0")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            problems.append(f"final_lr_ratio is {self.final_lr_ratio}; expected a fraction in [0, 1]")
        if self.amp not in ("auto", "bf16", "off"):
            problems.append(f"amp is {self.amp!r}; expected 'auto', 'bf16' or 'off'")
        if self.flow_loss_weight is not None and self.flow_loss_weight < 0:
            problems.append(f"flow_loss_weight is {self.flow_loss_weight}; expected >= 0 or None")
        if not self.vision_lr_scale >= 0:  # also rejects NaN
            problems.append(f"vision_lr_scale is {self.vision_lr_scale}; expected a fraction >= 0 of lr (0: frozen)")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy is {self.strategy!r}; expected one of {list(STRATEGIES)}")
        if set(self.freeze) - set(FREEZABLE):
            problems.append(f"freeze is {list(self.freeze)}; expected parts from {list(FREEZABLE)}")
        if self.lora_rank:
            if self.recipe == "pi0":
                problems.append("lora_rank is set with recipe 'pi0'; LoRA adapters learn from the backbone's "
                                "cross-entropy, which pi0 does not compute (its flow loss would train the "
                                "adapters instead): expected recipe ki, joint or fast")
            if not self.lora_targets or set(self.lora_targets) - set(LORA_TARGETS):
                problems.append(f"lora_targets is {list(self.lora_targets)}; expected a non-empty subset of "
                                f"{list(LORA_TARGETS)}")
            if self.lora_alpha is not None and not self.lora_alpha > 0:
                problems.append(f"lora_alpha is {self.lora_alpha}; expected > 0")
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    @property
    def lora_scale(self) -> float:
        return (self.lora_alpha if self.lora_alpha is not None else self.lora_rank) / self.lora_rank

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["lora_targets"], d["freeze"] = list(self.lora_targets), list(self.freeze)
        return d


def resolve_vlm_ratio(config: TrainConfig, has_vlm_data: bool) -> TrainConfig:
    """config with vlm_ratio set: None -> DEFAULT_VLM_RATIO when there is VLM data and the recipe has
    a CE term, else 0."""
    if config.vlm_ratio is not None:
        return config
    ratio = DEFAULT_VLM_RATIO if has_vlm_data and config.recipe != "pi0" else 0.0
    return dataclasses.replace(config, vlm_ratio=ratio)


def is_vlm_slot(slot: int, vlm_ratio: float) -> bool:
    """Whether slot k of every global batch holds VLM data: round(r * B) slots, spread evenly,
    independent of how the batch is split over ranks."""
    return math.floor((slot + 1) * vlm_ratio + 1e-9) > math.floor(slot * vlm_ratio + 1e-9)


def slot_generator(seed: int, step: int, slot: int) -> np.random.Generator:
    """The generator that draws slot `slot` of batch `step` (0-based)."""
    return np.random.default_rng([seed, step, slot])


class BatchBuilder:
    """Builds this rank's shard of the batch of any step as grad_accum micro-batches (consecutive
    slots); a pure function of (seed, step, slot)."""

    def __init__(self, config: TrainConfig, slots: range, action_sampler, vlm_sampler):
        if len(slots) % config.grad_accum:
            raise ValueError(f"grad_accum is {config.grad_accum} but each rank holds {len(slots)} samples of the "
                             f"batch of {config.batch_size}; expected batch_size / world size to be a multiple "
                             f"of grad_accum")
        self.seed, self.slots, self.micro = config.seed, slots, len(slots) // config.grad_accum
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

    def __call__(self, step: int) -> list[TrainingBatch]:
        examples = []
        for slot, vlm in zip(self.slots, self.vlm):
            sampler = self.vlm_sampler if vlm else self.action_sampler
            examples.append(sampler.example(slot_generator(self.seed, step, slot)))
        return [collate(examples[i: i + self.micro], self.pad_id) for i in range(0, len(examples), self.micro)]


class RecipeLoss(nn.Module):
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


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters the optimizer holds, in its order (tied weights once)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def make_optimizer(model: KIVLA, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; each group has an "lr_scale" (the fraction of the
    schedule's learning rate it gets): the vision tower config.vision_lr_scale, the rest 1."""
    tower = {id(p) for p in vision_tower(model).parameters()} if config.vision_lr_scale != 1.0 else set()
    rest, vision = [], []
    for p in model.parameters():
        if p.requires_grad:
            (vision if id(p) in tower else rest).append(p)
    groups = [{"params": rest, "lr_scale": 1.0}]
    if vision:
        groups.append({"params": vision, "lr_scale": config.vision_lr_scale})
    params = rest + vision
    fused = bool(params) and params[0].is_cuda
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
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
def prepare_parameters(model: KIVLA, config: TrainConfig) -> None:
    """What trains and how activations are kept: --freeze, LoRA adapters, activation checkpointing."""
    if config.lora_rank:
        apply_lora(model, config.lora_rank, config.lora_rank * config.lora_scale, config.lora_targets, config.seed)
    freeze(model, config.freeze + (("vision",) if config.vision_lr_scale == 0 else ()))
    model.set_activation_checkpointing(config.activation_checkpointing)


def train(model: KIVLA, config: TrainConfig, action_sampler=None, vlm_sampler=None, *,
          batches: Callable[[int], list[TrainingBatch]] | None = None,
          callback: Callable[[int, dict, KIVLA], Any] | None = None) -> list[dict]:
    """Train `model` in place; returns the metrics of every logged step of this call.

    action_sampler / vlm_sampler: objects with `example(rng) -> Example` and `pad_id`
    (batching.ActionChunkSampler / VLMSampler). batches: instead of the samplers, batches(step)
    -> the micro-batches of update `step` (0-based), called once per step in order; one process
    only (it is not split over ranks). callback(step, metrics, model) runs on rank 0
    after every logged step with the model in eval mode (sharded under fsdp); returning True
    stops training (a checkpoint is written first). Ctrl-C also writes out_dir/last before it
    propagates. With LoRA the model keeps its adapters after training (saved files are merged).
    """
    ctx = init_distributed(config.device)
    strategy = resolve_strategy(config.strategy, ctx)
    config = resolve_vlm_ratio(config, vlm_sampler is not None)
    alpha = model.config.flow_loss_weight if config.flow_loss_weight is None else config.flow_loss_weight
    if config.recipe == "pi0" and config.vlm_ratio > 0:
        warnings.warn("recipe 'pi0' trains on the flow loss only; its VLM samples add no gradient", stacklevel=2)
    out_dir = Path(config.out_dir) if config.out_dir else None
    if batches is None:
        builder = BatchBuilder(config, shard_slots(config.batch_size, ctx), action_sampler, vlm_sampler)
    elif ctx.world_size > 1 or action_sampler is not None or vlm_sampler is not None:
        raise ValueError(f"batches is given with world size {ctx.world_size} and samplers "
                         f"{type(action_sampler).__name__} / {type(vlm_sampler).__name__}; expected a single "
                         f"process and no samplers (a batches function is not split over ranks)")
    else:
        builder = batches

    model.to(ctx.device)
    prepare_parameters(model, config)
    start_step, resume_from = 0, None
    if config.resume:
        if out_dir is None:
            raise ValueError("resume is set but out_dir is None; expected the directory of the run to continue")
        if (out_dir / LAST_DIR / TRAINER_STATE_JSON).is_file():
            resume_from = out_dir / LAST_DIR
            start_step = load_model_state(resume_from, model, config)
        elif ctx.is_main:
            warnings.warn(f"resume: {out_dir / LAST_DIR} has no trainer state; starting from step 0", stacklevel=2)
    if strategy == "fsdp":
        shard_model(model, ctx.device)
    model.train()
    optimizer = make_optimizer(model, config)
    if resume_from is not None:
        load_optimizer_state(resume_from, model, optimizer, sharded=strategy == "fsdp")
    if not config.reseed_torch_every_step:
        torch.manual_seed(config.seed)
    runner: nn.Module = RecipeLoss(model, config.recipe)
    if strategy == "ddp":
        # pi0 never runs the backbone's head and final norm, fast never runs the expert.
        runner = nn.parallel.DistributedDataParallel(
            runner, device_ids=None, find_unused_parameters=config.recipe in ("pi0", "fast"))

    def save(step: int, numbered: bool = True) -> None:
        save_checkpoint(out_dir, model, optimizer, step, config, ctx, numbered=numbered, sharded=strategy == "fsdp")

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
            micro_batches = pending.result() if pending else builder(step)
            pending = pool.submit(builder, step + 1) if pool and step + 1 < config.steps else None
            lr = learning_rate(step, peak_lr=config.lr, warmup_steps=config.warmup_steps,
                               total_steps=config.steps, final_ratio=config.final_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # checkpoints before vision_lr_scale lack it
            if config.reseed_torch_every_step:
                torch.manual_seed(_step_seed(config.seed, step, ctx.rank))

            counts = [_counts(mb) for mb in micro_batches]
            global_counts = all_reduce_sum(torch.stack(counts).sum(0), ctx).clamp(min=1.0)
            optimizer.zero_grad(set_to_none=True)
            ce_sum = flow_sum = 0.0
            for i, (mb, count) in enumerate(zip(micro_batches, counts)):
                share = count / global_counts  # this micro-batch's part of each mean over the global batch
                with _gradient_sync(runner, model, strategy, i == len(micro_batches) - 1), \
                        _amp_context(config, ctx.device):
                    losses = runner(mb.to(ctx.device))
                    ce, flow = losses["ce"].float() * share[0].item(), losses["flow"].float() * share[1].item()
                    loss = combine(config.recipe, ce, flow, alpha) * ctx.world_size  # DDP/FSDP average over ranks
                    loss.backward()
                ce_sum, flow_sum = ce_sum + ce.item(), flow_sum + flow.item()
            clip = config.grad_clip_norm if config.grad_clip_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # fsdp: DTensor
            optimizer.step()
            step += 1
            sums += torch.tensor([ce_sum, flow_sum, 0.0], dtype=torch.float64)
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
                save(step)
            if stop:
                break
    except KeyboardInterrupt:
        if out_dir and step > start_step:
            save(step, numbered=False)
        raise
    finally:
        bar.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        if log:
            log.close()
    model.eval()
    return history


def _gradient_sync(runner: nn.Module, model: nn.Module, strategy: str, last_micro_batch: bool):
    """Reduce gradients over ranks only after the last micro-batch of a step (DDP no_sync,
    FSDP2 set_requires_gradient_sync); earlier micro-batches accumulate locally."""
    if strategy == "ddp" and not last_micro_batch:
        return runner.no_sync()
    if strategy == "fsdp":
        model.set_requires_gradient_sync(last_micro_batch)
    return contextlib.nullcontext()


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
                    config: TrainConfig, ctx: DistContext | None = None, numbered: bool = True,
                    sharded: bool = False) -> Path:
    """Write out_dir/checkpoint_<step>/ (when numbered) and out_dir/last/; every rank gathers
    (under fsdp), rank 0 writes, all wait."""
    ctx = ctx or DistContext()
    weights, opt = gather_training_state(model, optimizer, sharded)
    target = out_dir / (f"checkpoint_{step:06d}" if numbered else LAST_DIR)
    if ctx.is_main:
        _write_dir_atomically(target, lambda d: _write_checkpoint(d, model, weights, opt, step, config))
        if numbered:
            _write_dir_atomically(out_dir / LAST_DIR, lambda d: _link_tree(target, d))
            if config.keep_checkpoints:
                old = sorted(out_dir.glob("checkpoint_*"))[: -config.keep_checkpoints]
                for path in old:
                    shutil.rmtree(path, ignore_errors=True)
    barrier(ctx)
    return target


def gather_training_state(model: KIVLA, optimizer: torch.optim.Optimizer, sharded: bool) -> tuple[dict, dict]:
    """-> (full model state dict, optimizer state {"state": {param name: {...}}, "param_groups": [...
    "params": [param names]]}), full tensors on CPU. Under fsdp a collective (all ranks call it;
    rank 0 receives the tensors)."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return full_model_state(model, sharded), get_optimizer_state_dict(model, optimizer, options=options)
    names = trainable_names(model)
    opt = optimizer.state_dict()
    state = {names[index]: values for index, values in opt["state"].items()}
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in opt["param_groups"]]
    return model.state_dict(), {"state": state, "param_groups": groups}


def full_model_state(model: KIVLA, sharded: bool) -> dict[str, torch.Tensor]:
    """The whole model's state dict; under fsdp gathered from the shards (a collective), on rank 0."""
    if not sharded:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


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


def _write_checkpoint(directory: Path, model: KIVLA, weights: dict[str, torch.Tensor], opt: dict, step: int,
                      config: TrainConfig) -> None:
    tensors = {"rng.torch": torch.get_rng_state()}
    if config.lora_rank:
        tensors.update({f"lora.{k}": v.detach().contiguous().cpu() for k, v in weights.items() if is_adapter_key(k)})
        weights = merged_state_dict(weights, config.lora_scale)
    model.save_pretrained(directory, state=weights)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    scalars: dict[str, dict] = {}
    for name, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(name, {})[key] = value
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


def read_trainer_state(directory: Path) -> dict:
    """trainer_state.json of a checkpoint directory, format-checked."""
    json_path = directory / TRAINER_STATE_JSON
    try:
        state = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"trainer state {json_path} cannot be read: {e}") from e
    if state.get("format") != _STATE_FORMAT:
        raise ValueError(f"trainer state {json_path} has format {state.get('format')!r}; expected {_STATE_FORMAT!r}")
    return state


def check_resumable(directory: Path, saved: dict, config: TrainConfig) -> None:
    """Settings a resumed run must share with the saved one (else a clear error); others warn."""
    if saved["recipe"] != config.recipe:
        raise ValueError(f"resume: {directory} was trained with recipe {saved['recipe']!r}; this run asks for "
                         f"{config.recipe!r} (use a new --out directory to change recipes)")
    lora_saved = (saved.get("lora_rank", 0), sorted(saved.get("lora_targets", LORA_TARGETS)))
    lora_now = (config.lora_rank, sorted(config.lora_targets))
    if lora_saved[0] != lora_now[0] or (lora_now[0] and lora_saved[1] != lora_now[1]):
        def says(rank, targets):
            return f"--lora {rank} --lora-targets {','.join(targets)}" if rank else "no --lora"

        raise ValueError(f"resume: {directory} was trained with {says(*lora_saved)}; this run asks for "
                         f"{says(*lora_now)}. Expected the same LoRA rank and targets (the saved adapters and "
                         f"optimizer state have their shapes); use a new --out directory to change them")
    changed = {k: (saved.get(k), v) for k, v in config.to_dict().items()
               if k in ("steps", "batch_size", "lr", "seed", "vlm_ratio", "warmup_steps", "lora_alpha", "freeze")
               and saved.get(k) != v}
    if changed:
        warnings.warn(f"resume: settings differ from the saved run {changed} (saved, now); the continuation "
                      f"will not match an uninterrupted run", stacklevel=4)


def load_model_state(directory: Path, model: KIVLA, config: TrainConfig) -> int:
    """Restore weights (with LoRA: the adapters; their frozen base is the model's own, rebuilt from
    the run's init) and RNG states from a checkpoint, before any sharding; returns its step."""
    state = read_trainer_state(directory)
    check_resumable(directory, state["train_config"], config)
    try:
        tensors = load_file(str(directory / TRAINER_STATE_TENSORS))
        weights = load_file(str(directory / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {directory} cannot be read (corrupt or truncated?): {e}") from e
    allowed_missing = {_TIED_HEAD}
    if config.lora_rank:
        merged = adapted_weight_keys(weights, config.lora_targets)  # W + BA: the base stays the model's
        weights = {k: v for k, v in weights.items() if k not in merged}
        weights.update({k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")})
        allowed_missing |= merged
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if k not in allowed_missing]
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint {directory} does not fit the model: missing {missing[:10]}, "
                         f"unexpected {result.unexpected_keys[:10]}")
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    rng = state["rng"]
    np.random.set_state((rng["numpy"]["bit_generator"], np.array(rng["numpy"]["key"], dtype=np.uint32),
                         rng["numpy"]["pos"], rng["numpy"]["has_gauss"], rng["numpy"]["gauss"]))
    random.setstate((rng["python"]["version"], tuple(rng["python"]["internal"]), rng["python"]["gauss_next"]))
    return int(state["step"])


def load_optimizer_state(directory: Path, model: KIVLA, optimizer: torch.optim.Optimizer, sharded: bool) -> None:
    """Restore AdamW's moments and step counts (saved by parameter name) into this run's optimizer;
    under fsdp each rank keeps its shard of them."""
    state = read_trainer_state(directory)
    tensors = load_file(str(directory / TRAINER_STATE_TENSORS))
    by_name: dict[str, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            name, field = key[len("optimizer."):].rsplit(".", 1)
            by_name.setdefault(name, {})[field] = value
    for name, values in state["optimizer"]["scalar_state"].items():
        by_name.setdefault(name, {}).update(values)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in state["optimizer"]["param_groups"]]
    names = trainable_names(model)
    saved_names = [n for g in groups for n in g["params"]]
    if sorted(saved_names) != sorted(names):
        raise ValueError(f"resume: the optimizer state in {directory} is for {len(saved_names)} parameters that do "
                         f"not match this run's {len(names)} trainable ones (first differences: "
                         f"{sorted(set(saved_names) ^ set(names))[:5]}); expected the same --lora/--freeze settings")
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, {"state": by_name, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True))
        return
    index = {name: i for i, name in enumerate(names)}
    optimizer.load_state_dict({"state": {index[n]: v for n, v in by_name.items()},
                               "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in groups]})
