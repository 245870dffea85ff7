"""Data-parallel training: 2 gloo processes under torchrun = one process on the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from ddp_worker import ddp_config
from ki_vla_ros.train.distributed import DistContext, shard_slots
from ki_vla_ros.train.prepare import prepare_run
from ki_vla_ros.train.trainer import train

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_two_gloo_ranks_under_torchrun_match_one_process_on_the_global_batch(sim_dataset_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "ddp_worker.py"), str(sim_dataset_dir), str(tmp_path / "ddp"), "ki"],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    config = ddp_config("ki")
    single = prepare_run(sim_dataset_dir, config)
    history = train(single.model, config, single.action_sampler, single.vlm_sampler)

    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["world_size"] == 2
    for got, want in zip(ddp["history"], history):
        for key in ("total", "ce", "flow", "grad_norm"):
            assert abs(got[key] - want[key]) <= 1e-5 * max(1.0, abs(want[key])), (key, got, want)
    params = load_file(str(tmp_path / "ddp" / "params.safetensors"))
    worst = max(float((params[name] - p.detach()).abs().max()) for name, p in single.model.state_dict().items()
                if name in params)
    print(f"DDP (2 gloo ranks) vs one process after {config.steps} steps: max |parameter difference| = {worst:.2e}")
    assert worst < 1e-5


def test_each_rank_builds_an_equal_disjoint_shard_of_the_global_batch():
    shards = [shard_slots(8, DistContext(rank=r, world_size=4)) for r in range(4)]
    assert [list(s) for s in shards] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    try:
        shard_slots(6, DistContext(rank=0, world_size=4))
    except ValueError as e:
        assert "multiple of the world size 4" in str(e)
    else:
        raise AssertionError("an uneven split must be refused")
