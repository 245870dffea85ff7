"""Data-parallel training under torchrun: process group, device, batch shards, reductions.

    torchrun --nproc_per_node 2 -m ki_vla_ros.cli train ...      (or python -m torch.distributed.run)

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init_distributed` joins the group (nccl on
GPUs, gloo on CPU) and picks cuda:LOCAL_RANK. The global batch of B samples is split into
contiguous shards of B / world_size slots; rank r builds slots [r * B/W, (r + 1) * B/W),
each from a generator derived from (seed, step, slot), so the union of the shards is the
batch one process would build. Gradients are averaged by DDP; the trainer weights each
rank's losses by its share of the global token/sample counts, so the average equals the
single-process loss of the global batch (not a mean of per-rank means).

Strategies (TrainConfig.strategy; the trainer's one loop runs all of them):
    single   one process, the model as it is
    ddp      every rank holds the whole model; DDP all-reduces (averages) gradients
    fsdp     FSDP2 (`fully_shard`): each Gemma layer, SigLIP layer and expert layer is one
             shard group, the root (embeddings, projector, norms, expert in/out) another; a rank
             holds 1/W of every parameter, gradient and AdamW moment, and gathers a layer's
             weights only while it runs. On CUDA the gathered weights are bf16 and gradients are
             reduced in fp32 (MixedPrecisionPolicy); master weights and AdamW state stay fp32.
             On CPU (gloo) everything is fp32. Gradients are averaged like DDP's.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("auto", "single", "ddp", "fsdp")


@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:LOCAL_RANK when a GPU is there, else cpu; anything else as given."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device == "cuda" and local_rank:
        return torch.device(f"cuda:{local_rank}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {device!r} but torch sees no CUDA GPU; expected 'cpu' or 'auto'")
    return dev


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when there is one (or use the one already initialized)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local, resolve_device(device, local))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, local, dev)


def shard_slots(global_batch_size: int, ctx: DistContext) -> range:
    """The slots of the global batch this rank builds."""
    if global_batch_size % ctx.world_size:
        raise ValueError(f"batch_size is {global_batch_size}; expected a multiple of the world size "
                         f"{ctx.world_size} (each rank takes an equal shard)")
    per_rank = global_batch_size // ctx.world_size
    return range(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a small float64 tensor over ranks (identity in one process)."""
    if not ctx.distributed:
        return values
    backend_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    out = values.to(backend_device).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's decision (e.g. stop now) for every rank."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    backend_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = t.to(backend_device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def resolve_strategy(strategy: str, ctx: DistContext) -> str:
    """"auto" -> ddp under a multi-process launch, else single; a strategy that does not fit the
    launch is an error naming both."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy is {strategy!r}; expected one of {list(STRATEGIES)}")
    if strategy == "auto":
        return "ddp" if ctx.distributed else "single"
    if strategy in ("ddp", "fsdp") and not ctx.distributed:
        raise ValueError(f"--strategy {strategy} needs a distributed launch with 2 or more processes "
                         f"(torchrun --nproc_per_node N -m ki_vla_ros.cli train ...); this process has "
                         f"WORLD_SIZE={ctx.world_size}. Use --strategy single for one process")
    if strategy == "single" and ctx.distributed:
        raise ValueError(f"--strategy single, but this is rank {ctx.rank} of a {ctx.world_size}-process launch; "
                         f"expected ddp or fsdp (or launch one process)")
    return strategy


def shard_model(model: nn.Module, device: torch.device) -> None:
    """FSDP2 in place: fully_shard per transformer layer (backbone, vision tower, expert), then the
    root; `compute_loss` is registered as a forward so the root's gather/reshard hooks run on it."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    layers = [*model.backbone.model.language_model.layers,
              *model.backbone.model.vision_tower.encoder.layers,
              *model.action_expert.layers]
    # A Gemma layer returns its K/V as views (transposes); FSDP2 warns that an in-place op on a view
    # would skip its backward hook. Nothing edits them in place (the expert concatenates them).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    register_fsdp_forward_method(model, "compute_loss")
