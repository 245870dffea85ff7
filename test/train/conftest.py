"""Fixtures of the training tests: a small simulated dataset and tiny models, all on CPU.

Helpers (sim_bags.py, ddp_worker.py) import as plain modules from this directory.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from ki_vla_ros.runtime.config import load_robot_config  # noqa: E402
from ki_vla_ros.train.dataset import EpisodeDataset, ensure_fast_tokenizer, ensure_norm_stats  # noqa: E402
from ki_vla_ros.train.prepare import tiny_config_for  # noqa: E402
from ki_vla_ros.train.sim_data import make_sim_dataset  # noqa: E402

SIM_EPISODES = 3
SIM_STEPS = 20
IMAGE_SIDE_PX = 32


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Two shared cores: one torch thread per test process is faster than contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def sim_dataset_dir(tmp_path_factory) -> Path:
    """3 reach demonstrations of 20 steps (single_arm, 32 px images) with VLM samples, norm stats
    and a FAST tokenizer fitted for the tiny model. Tests must not modify it."""
    root = make_sim_dataset(load_robot_config("single_arm"), SIM_EPISODES, tmp_path_factory.mktemp("data") / "sim",
                            image_side_px=IMAGE_SIDE_PX, steps=SIM_STEPS)
    dataset = EpisodeDataset.open(root)
    config = tiny_config_for(dataset)
    ensure_norm_stats(dataset)
    ensure_fast_tokenizer(dataset, config.action_horizon, config.fast_vocab_size)
    return root


@pytest.fixture
def sim_dataset(sim_dataset_dir) -> EpisodeDataset:
    return EpisodeDataset.open(sim_dataset_dir)
