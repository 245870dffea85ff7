"""Recorded rosbags -> a training dataset (one bag = one episode).

Each bag is read by the evaluator's replay (eval/episodes.py), so a training frame is exactly
an observation the live policy node would have formed: the config's synchronizer (slop, queue,
max age), camera decoding, joint order and slots, instruction topics. Frames are taken at most
every 0.9 * chunk.step_duration_s (the synchronized sets closest to the step grid).

Actions (the dataset's semantics, the same as ki_vla_ros.sim's demonstrations), for the frame
observed at stamp s:

    joint_trajectory group   the commanded position at s + step_duration_s (the JointTrajectory
                             recorded on the group's controller_topic, interpolated as the
                             controller does); when no commands were recorded, the measured
                             joint position at s + step_duration_s (the next joint state)
    base_twist group         the velocity commanded from s (Twist on controller_topic), else the
                             measured odometry twist

Frames whose action is not covered by the recording (before the first command, in the last
step of the bag) are dropped. A bag that cannot be used raises BagError naming the bag, the
topic and the problem; nothing is written unless every bag converts (or --skip-bad is given).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ki_vla_ros.eval.bag_io import BagError
from ki_vla_ros.eval.episodes import EpisodeReplay
from ki_vla_ros.runtime.config import RobotConfig
from ki_vla_ros.train.dataset import EpisodeDataset, compute_norm_stats, write_dataset

FRAME_SPACING_FRACTION = 0.9  # take a synchronized set at most every 0.9 step: the one nearest the grid
SPACING_WARN_FRACTION = 0.25  # warn when frames are further than this fraction of a step off the grid


@dataclasses.dataclass
class BagSummary:
    bag: str
    frames: int = 0
    duration_s: float = 0.0
    action_sources: dict[str, str] = dataclasses.field(default_factory=dict)
    instruction: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None  # set when the bag was skipped


def bag_to_episode(bag: str | Path, config: RobotConfig, *, instruction: str | None = None,
                   targets: str = "auto", summary: BagSummary | None = None) -> dict:
    """One bag -> an episode dict for write_dataset (images, state, actions, instruction, ...)."""
    dt = config.chunk.step_duration_s
    summary = summary or BagSummary(str(bag))
    with EpisodeReplay(bag, config, every_s=FRAME_SPACING_FRACTION * dt, instruction=instruction,
                       targets=targets) as replay:
        observations = [r.observation for r in replay.observations()]
        episode_targets = replay.targets
        counters = replay.counters
    if not observations:
        reasons = counters.as_dict()["reasons"]
        raise BagError(bag, f"yields no synchronized observation of cameras {[c.name for c in config.cameras]} "
                            f"and joint states (sync settings {config.sync}); reasons: {reasons or 'none recorded'}")
    stamps = np.array([o.stamp_s for o in observations])
    actions = np.full((len(stamps), config.action_dim), np.nan)
    valid = np.ones(len(stamps), dtype=bool)
    for group_name, indices, timeline in episode_targets.parts:
        offset = dt if config.action_group(group_name).kind == "joint_trajectory" else 0.0
        values, ok = timeline.sample(stamps + offset)
        actions[:, list(indices)] = values
        valid &= ok
    keep = np.flatnonzero(valid)
    if len(keep) < 2:
        raise BagError(bag, f"has {len(keep)} observation(s) with a recorded action after them (of "
                            f"{len(stamps)} observations, {stamps[0]:.3f}..{stamps[-1]:.3f} s; targets from "
                            f"{episode_targets.sources}); expected at least 2")

    kept = [observations[i] for i in keep]
    images = {}
    for camera in config.cameras:
        frames = [o.images[camera.slot] for o in kept]
        shapes = {f.shape for f in frames if f is not None}
        if any(f is None for f in frames) or len(shapes) != 1:
            raise BagError(bag, f"camera '{camera.name}' frames have sizes {sorted(shapes)} and "
                                f"{sum(f is None for f in frames)} missing; expected one size in every frame",
                           camera.topic)
        images[camera.name] = np.stack(frames)
    prompts = [o.prompt for o in kept]
    if not prompts[0].strip():
        raise BagError(bag, "has no instruction: no /ki_vla/instruction or /ki_vla/subtask message and the "
                            "config's default_instruction is empty; pass --instruction TEXT")
    if len(set(prompts)) > 1:
        summary.warnings.append(f"instruction changes during the bag ({sorted(set(prompts))[:3]}); the "
                                f"episode keeps the first, {prompts[0]!r}")
    spacing = np.diff(stamps[keep])
    off_grid = np.abs(spacing - dt) > SPACING_WARN_FRACTION * dt
    if off_grid.any():
        summary.warnings.append(f"{int(off_grid.sum())} of {len(spacing)} frame gaps are off the {dt} s step "
                                f"(range {spacing.min():.3f}..{spacing.max():.3f} s): cameras slower than "
                                f"the step rate, or dropped messages")
    summary.frames = len(keep)
    summary.duration_s = float(stamps[keep[-1]] - stamps[keep[0]])
    summary.action_sources = episode_targets.sources
    summary.instruction = prompts[0]
    return {
        "images": images,
        "state": np.stack([o.model_state() for o in kept]).astype(np.float32),
        "actions": actions[keep].astype(np.float32),
        "instruction": prompts[0],
        "source_bag": str(bag),
        "start_stamp_s": float(stamps[keep[0]]),
    }


def convert_bags(bags: Sequence[str | Path], config: RobotConfig, out_dir, *, instruction: str | None = None,
                 targets: str = "auto", skip_bad: bool = False, overwrite: bool = False,
                 on_bag: Callable[[BagSummary], None] | None = None) -> tuple[Path, list[BagSummary]]:
    """Convert bags into a dataset at out_dir (with norm_stats.json); returns it and a summary per bag."""
    if not bags:
        raise ValueError("no bags given; expected one or more rosbag2 directories or .mcap/.db3 files")
    summaries: list[BagSummary] = []

    def episodes() -> Iterator[dict]:
        for bag in bags:
            summary = BagSummary(str(bag))
            summaries.append(summary)
            try:
                episode = bag_to_episode(bag, config, instruction=instruction, targets=targets, summary=summary)
            except BagError as e:
                if not skip_bad:
                    raise
                summary.error = str(e)
                episode = None
            if on_bag is not None:
                on_bag(summary)
            if episode is not None:
                yield episode

    out = Path(out_dir)
    existed = out.exists() and any(out.iterdir())
    try:
        root = write_dataset(out, episodes(), robot=config.name, state_names=config.state_names,
                             action_names=config.action_names, cameras=[c.name for c in config.cameras],
                             camera_slots={c.name: c.slot for c in config.cameras},
                             step_duration_s=config.chunk.step_duration_s, overwrite=overwrite)
    except BaseException:
        if not existed or overwrite:  # never leave a half-written dataset behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    compute_norm_stats(EpisodeDataset.open(root), save=True)
    return root, summaries
