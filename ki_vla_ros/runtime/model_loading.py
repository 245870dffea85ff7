"""Load the predictor a robot config asks for (a checkpoint directory, or "tiny").

torch is imported only when a model is actually loaded, so the rest of runtime/ stays
light. Used by the policy node, the planner and `ki-vla eval-bag`, so all three load a
checkpoint the same way.
"""

from __future__ import annotations

from pathlib import Path

from ki_vla_ros.runtime.config import RobotConfig

TINY = "tiny"


def load_predictor(config: RobotConfig, checkpoint: str | None = None, device: str | None = None,
                   seed: int = 0):
    """-> ki_vla_ros.model.inference.Predictor sized for `config`.

    checkpoint: overrides config.model.checkpoint. "tiny" builds the tiny preset with random
    weights (for tests and the demo when no trained checkpoint is given) sized to the
    robot's state, action and camera counts.
    """
    from ki_vla_ros.model.inference import Predictor

    checkpoint = checkpoint or config.model.checkpoint
    device = device or config.model.device
    if checkpoint == TINY:
        return Predictor.tiny_random(state_dim=config.state_dim, action_dim=config.action_dim,
                                     num_cameras=config.num_image_slots, seed=seed)
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model checkpoint '{checkpoint}' (from {config.source}) is not a "
                                f"directory; expected a directory written by save_pretrained or 'tiny'")
    return Predictor.from_pretrained(str(path), device=device)
