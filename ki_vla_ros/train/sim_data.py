"""Synthetic training data: scripted reach demonstrations in ki_vla_ros.sim, with VLM samples.

Episode s (seed = first_seed + s) is `sim.generate_episode(config, seed)`: a table with
colored blocks, the instruction "move to the red block" (or a rewording), and the expert's
joint-space reach. Its VLM co-training samples ask about the same scene (sim.vqa): every
unambiguous question/answer pair and a caption ("from left to right: ..."), each attached
to the episode with frame null (any frame: the blocks never move).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from ki_vla_ros.runtime.config import RobotConfig
from ki_vla_ros.sim import generate_episode, scene_caption, start_reach_episode
from ki_vla_ros.train.dataset import compute_norm_stats, EpisodeDataset, write_dataset

CAPTION_QUESTION = "describe the scene"


def make_sim_dataset(config: RobotConfig, num_episodes: int, out_dir, *, first_seed: int = 0,
                     image_side_px: int | None = 96, steps: int | None = None, overwrite: bool = False,
                     on_episode: Callable[[int], None] | None = None) -> Path:
    """Write num_episodes expert demonstrations (+ vlm.jsonl, norm_stats.json) to out_dir.

    image_side_px: longest image side (the cameras' aspect kept); None = the config's sizes.
    """
    if num_episodes <= 0:
        raise ValueError(f"num_episodes is {num_episodes}; expected at least 1")
    dt = config.chunk.step_duration_s
    vlm_rows: list[dict] = []

    def episodes() -> Iterator[dict]:
        for i in range(num_episodes):
            seed = first_seed + i
            ep = generate_episode(config, seed, steps=steps, max_image_side_px=image_side_px)
            vlm_rows.extend({"episode": i, "frame": None, "question": q, "answer": a} for q, a in ep["vqa"])
            robot, _ = start_reach_episode(config, seed, dt)
            vlm_rows.append({"episode": i, "frame": None, "question": CAPTION_QUESTION,
                             "answer": scene_caption(robot.scene)})
            if on_episode is not None:
                on_episode(i)
            yield {**ep, "seed": seed}

    # vlm_rows fills while episodes() streams; write_dataset reads it after the last episode.
    root = write_dataset(out_dir, episodes(), robot=config.name, state_names=config.state_names,
                         action_names=config.action_names, cameras=[c.name for c in config.cameras],
                         camera_slots={c.name: c.slot for c in config.cameras}, step_duration_s=dt,
                         vlm_samples=vlm_rows, overwrite=overwrite)
    compute_norm_stats(EpisodeDataset.open(root), save=True)
    return root

