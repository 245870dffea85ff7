"""One rank of the strategy tests: `python -m torch.distributed.run --standalone --nproc_per_node 2
strategy_worker.py DATA OUT`. Runs every multi-process scenario of test_strategies.py in one launch
(a launch costs ~10 s of imports on a 2-core machine); rank 0 writes OUT/<scenario>.safetensors
(parameters after training, consolidated), OUT/<scenario>.json (metrics) and OUT/ki_gradients.json."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from ki_vla_ros.train.distributed import shard_model
from ki_vla_ros.train.prepare import prepare_run
from ki_vla_ros.train.trainer import TrainConfig, RecipeLoss, full_model_state, prepare_parameters, train

STEPS = 3
INTERRUPT_AT = 2


def strategy_config(out_dir=None, **overrides) -> TrainConfig:
    """The run every scenario (and the single-process reference in the test) trains."""
    base = dict(recipe="ki", steps=STEPS, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, vlm_ratio=0.25,
                device="cpu", progress=False, prefetch=False, out_dir=str(out_dir) if out_dir else None)
    return TrainConfig(**{**base, **overrides})


SCENARIOS = {  # name -> TrainConfig overrides; the single-process reference is the same without strategy
    "fsdp": {"strategy": "fsdp"},
    "fsdp_checkpointing": {"strategy": "fsdp", "activation_checkpointing": True},
    "fsdp_grad_accum": {"strategy": "fsdp", "grad_accum": 2},
    "ddp_grad_accum": {"strategy": "ddp", "grad_accum": 2},
    "fsdp_lora": {"strategy": "fsdp", "lora_rank": 4},
}
RESUMED = {"fsdp_resumed": "fsdp", "fsdp_lora_resumed": "fsdp_lora"}  # resumed run -> its straight twin


def interrupted_and_resumed(data: str, out_dir: Path, overrides: dict):
    """Train, stop after INTERRUPT_AT steps (as a crash would), then resume from OUT/last in a new
    prepare_run (what a new launch does) -> (model, metrics of the resumed part)."""
    config = strategy_config(out_dir, **overrides)
    first = prepare_run(data, config)
    train(first.model, config, first.action_sampler, first.vlm_sampler,
          callback=lambda step, metrics, model: step == INTERRUPT_AT)
    config = dataclasses.replace(config, resume=True)
    second = prepare_run(data, config)
    return second.model, train(second.model, config, second.action_sampler, second.vlm_sampler)


def ki_gradients(model, batch, recipe: str = "ki", sharded: bool = False, forward=None) -> dict[str, float]:
    """Largest |gradient| that each loss term alone puts on each part of the model:
    {"flow->backbone", "flow->adapters", "flow->expert", "ce->backbone", "ce->adapters", "ce->expert"}
    (adapters: LoRA parameters, also counted in backbone). Under fsdp the max over all shards.
    forward(batch) -> losses: default model.compute_loss(batch, recipe) (a DDP wrapper in the worker)."""
    forward = forward or (lambda b: model.compute_loss(b, recipe))
    parts = {"backbone": lambda n: n.startswith("backbone."), "adapters": lambda n: ".lora_" in n,
             "expert": lambda n: n.startswith("action_expert.")}
    out = {}
    for term in ("flow", "ce"):
        model.zero_grad(set_to_none=True)
        forward(batch)[term].backward()
        for part, member in parts.items():
            grads = [p.grad for n, p in model.named_parameters() if member(n) and p.grad is not None]
            local = max((float((g.to_local() if sharded else g).abs().max()) for g in grads), default=0.0)
            if sharded:
                value = torch.tensor([local], dtype=torch.float64)
                dist.all_reduce(value, op=dist.ReduceOp.MAX)
                local = float(value)
            out[f"{term}->{part}"] = local
    model.zero_grad(set_to_none=True)
    return out


def _save(out: Path, name: str, model, history, sharded: bool) -> None:
    weights = full_model_state(model, sharded)
    if dist.get_rank() == 0:
        save_file({k: v.contiguous() for k, v in weights.items() if k != "backbone.lm_head.weight"},
                  str(out / f"{name}.safetensors"))
        (out / f"{name}.json").write_text(json.dumps(history))


def main(data: str, out: str) -> None:
    torch.set_num_threads(1)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, overrides in SCENARIOS.items():
        config = strategy_config(**overrides)
        run = prepare_run(data, config)
        history = train(run.model, config, run.action_sampler, run.vlm_sampler)
        _save(out_dir, name, run.model, history, config.strategy == "fsdp")
    for name, twin in RESUMED.items():
        model, history = interrupted_and_resumed(data, out_dir / name, SCENARIOS[twin])
        _save(out_dir, name, model, history, sharded=True)

    result = {}
    for strategy in ("ddp", "fsdp"):
        config = strategy_config(lora_rank=4)
        run = prepare_run(data, config)
        batch = run.action_sampler.sample(4, np.random.default_rng(7 + dist.get_rank()))
        prepare_parameters(run.model, config)
        run.model.train()
        if strategy == "fsdp":
            shard_model(run.model, torch.device("cpu"))
            result[strategy] = ki_gradients(run.model, batch, sharded=True)
        else:  # one term at a time leaves parameters without gradient: DDP must look for them
            ddp = torch.nn.parallel.DistributedDataParallel(RecipeLoss(run.model, "ki"), find_unused_parameters=True)
            result[strategy] = ki_gradients(run.model, batch, forward=ddp)
    if dist.get_rank() == 0:
        (out_dir / "ki_gradients.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
