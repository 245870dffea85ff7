"""One rank of the data-parallel test: `python -m torch.distributed.run --standalone --nproc_per_node 2
ddp_worker.py DATA OUT RECIPE`. Trains the tiny model on DATA; rank 0 writes OUT/params.safetensors
and OUT/metrics.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ki_vla_ros.train.prepare import prepare_run
from ki_vla_ros.train.trainer import TrainConfig, train

DDP_STEPS = 3


def ddp_config(recipe: str) -> TrainConfig:
    return TrainConfig(recipe=recipe, steps=DDP_STEPS, batch_size=4, lr=3e-4, warmup_steps=1, log_every=1,
                       vlm_ratio=0.25, device="cpu", progress=False)


def main(data: str, out: str, recipe: str) -> None:
    torch.set_num_threads(1)
    config = ddp_config(recipe)
    run = prepare_run(data, config)
    history = train(run.model, config, run.action_sampler, run.vlm_sampler)
    if run.context.is_main:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in run.model.state_dict().items() if k != "backbone.lm_head.weight"},
                  str(Path(out) / "params.safetensors"))
        (Path(out) / "metrics.json").write_text(json.dumps({"world_size": run.context.world_size,
                                                            "history": history}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
