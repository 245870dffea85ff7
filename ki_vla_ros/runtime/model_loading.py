"""Load the predictor a robot config asks for (a checkpoint directory, "demo" or "tiny").

torch is imported only when a model is actually loaded, so the rest of runtime/ stays
light. Used by the policy node, the planner and `ki-vla eval-bag`, so all three load a
checkpoint the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from ki_vla_ros.runtime.config import RobotConfig

TINY = "tiny"
# The shipped single_arm demo checkpoint (experiments/demo_checkpoint.py makes it: python -m experiments make-demo-checkpoint).
DEMO = "demo"
DEMO_CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo_checkpoint"


def describe_checkpoint(checkpoint: str) -> str:
    """What a checkpoint setting loads, in words (for logs)."""
    if checkpoint == TINY:
        return "random tiny weights (no trained checkpoint given)"
    if checkpoint == DEMO:
        return f"the shipped demo checkpoint ({DEMO_CHECKPOINT_DIR})"
    return checkpoint


def set_torch_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads for this process; 0 = auto: a quarter of the cores, at least 1.

    torch defaults to one thread per core. A robot computer runs the policy beside the
    drivers, controllers, DDS and (here) the sim, and oversubscribed OpenMP threads spin
    against each other: on the project's 2-core machine under load the tiny model took
    2.8 s per chunk with 2 threads and 0.16 s with 1. Raise it on a machine with cores to spare.
    """
    import torch

    threads = requested if requested > 0 else max(1, (os.cpu_count() or 1) // 4)
    torch.set_num_threads(threads)
    return threads


def load_predictor(config: RobotConfig, checkpoint: str | None = None, device: str | None = None,
                   seed: int = 0):
    """-> ki_vla_ros.model.inference.Predictor sized for `config`.

    checkpoint: overrides config.model.checkpoint. "tiny" builds the tiny preset with random
    weights (for tests) sized to the robot's state, action and camera counts; "demo" is the
    shipped single_arm demo checkpoint (DEMO_CHECKPOINT_DIR). With model.remote set (and no
    checkpoint override) -> a ki_vla_ros.serve.client.RemotePredictor for that server instead.
    """
    if config.model.remote is not None and checkpoint is None:
        from ki_vla_ros.serve.client import RemotePredictor

        m = config.model
        return RemotePredictor(m.remote, timeout_s=m.remote_timeout_s, layout=m.remote_layout,
                               state_dim=config.state_dim, action_dim=config.action_dim,
                               extra_action_dims=m.remote_extra_action_dims)
    from ki_vla_ros.model.inference import Predictor

    checkpoint = checkpoint or config.model.checkpoint
    device = device or config.model.device
    fast = {"compile": config.model.compile, "cuda_graph": config.model.cuda_graph}
    if checkpoint == TINY:
        return Predictor.tiny_random(state_dim=config.state_dim, action_dim=config.action_dim,
                                     num_cameras=config.num_image_slots, seed=seed, **fast)
    path = DEMO_CHECKPOINT_DIR if checkpoint == DEMO else Path(checkpoint).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model checkpoint '{checkpoint}' (from {config.source}) is not a "
                                f"directory; expected a directory written by save_pretrained, '{DEMO}' or '{TINY}'")
    return Predictor.from_pretrained(str(path), device=device, **fast)
