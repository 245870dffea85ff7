"""Written files (checkpoints, datasets) get the mode the umask allows, as every other file does.

safetensors creates its files 0600: a checkpoint or dataset written on a shared machine could
not be read by the rest of the team."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.train.dataset import write_dataset


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _modes(directory) -> dict[str, int]:
    return {str(p.relative_to(directory)): stat.S_IMODE(p.stat().st_mode) for p in directory.rglob("*") if p.is_file()}


def test_a_saved_checkpoint_has_the_mode_the_umask_allows(tmp_path, umask):
    torch.manual_seed(0)
    KIVLA(KIVLAConfig.preset("tiny")).save_pretrained(tmp_path / "checkpoint")
    modes = _modes(tmp_path / "checkpoint")
    assert "model.safetensors" in modes
    assert modes == {name: 0o666 & ~umask for name in modes}


def test_a_written_dataset_has_the_mode_the_umask_allows(tmp_path, umask):
    rng = np.random.default_rng(0)
    episode = {"images": {"front": rng.integers(0, 256, (4, 12, 16, 3), dtype=np.uint8)},
               "state": rng.normal(size=(4, 3)).astype(np.float32),
               "actions": rng.normal(size=(4, 2)).astype(np.float32), "instruction": "stack the cups"}
    write_dataset(tmp_path / "dataset", [episode], robot="arm", state_names=["a", "b", "c"], action_names=["x", "y"],
                  cameras=["front"], step_duration_s=0.05)
    modes = _modes(tmp_path / "dataset")
    assert any(name.endswith(".safetensors") for name in modes)
    assert modes == {name: 0o666 & ~umask for name in modes}
