"""`ki-vla check`: does this checkpoint fit this robot config (and this recording)?

The failures people report most with π0/π0.5 are silent mismatches: norm stats of another
robot, cameras routed to the wrong image slot, a gripper in 0..1 against one in 0..0.08 m,
delta versus absolute actions. Each check below compares one such fact between the robot
config, the checkpoint directory (read without loading the weights) and optionally a bag,
and gives one `CheckResult`: PASS, WARN (probably fine, look at it) or FAIL (do not run).

Checks, in table order:
    checkpoint files        config.json, weights, norm stats and a text tokenizer are there
    state dims / action dims   the norm stats' widths against the config's state/action vectors
    state names / action names the training data's names (norm_stats.json "data_layout", written
                            by `ki-vla train`) against the config's; WARN when not recorded
    delta action dims       offsets only on joint positions (same name in state and action);
                            WARN for a gripper predicted as an offset (usually absolute)
    norm stats vs limits    per joint, q01..q99 of state and absolute actions inside the joint
                            limits (10 % margin), and not a tiny part of them (unit/scale mix-up)
    image slots             the model has a slot for every camera's configured slot
    image size              cameras with a configured size against the model's square input
    text tokenizer          the file the model needs, and its vocabulary fits the embedding
    horizon                 chunk.horizon_steps <= the model's action horizon
    step duration           chunk.step_duration_s against the training data's step
    (with a bag)
    bag state vs norm stats recorded joint positions inside the stats' range
    camera <name>           images change while the arm moves (FAIL: never change at all)
    cameras distinct        no two cameras show the same images
    wrist camera motion     a camera named wrist/hand changes more than the others when the arm
                            moves; less than every other camera looks like swapped topics
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ki_vla_ros.runtime.config import RobotConfig, is_gripper_joint

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
LIMIT_MARGIN = 0.10  # norm stats may exceed a joint's limits by this fraction of its range
TINY_RANGE = 0.05  # a joint that moves over less than this fraction of its limits: units?
MOVING_JOINT_RAD = 0.05  # the arm "moves" in a bag when some joint travels this far
STILL_IMAGE_LEVELS = 1.0  # mean |frame difference| (0..255) below which a camera "barely changes"
SAME_IMAGE_LEVELS = 0.5  # two cameras whose images differ less than this are "identical"
WRIST_WORDS = ("wrist", "hand", "gripper")


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # PASS, WARN or FAIL
    expected: str
    found: str


def format_table(results: Sequence[CheckResult], width: int = 90) -> str:
    """A plain-text table, one line per check (long cells are cut with '...')."""

    def cut(text: str) -> str:
        return text if len(text) <= width else text[:width - 3] + "..."

    rows = [("check", "status", "expected", "found")] + [(r.name, r.status, cut(r.expected), cut(r.found))
                                                         for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def run_checks(config: RobotConfig, checkpoint: str | Path, bag: str | Path | None = None) -> list[CheckResult]:
    """Every check of the module docstring; a missing checkpoint part stops the ones that need it."""
    from ki_vla_ros.model.checkpoint import (
        NORM_STATS_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, read_config, load_checkpoint_norm_stats, read_text_tokenizer)
    from ki_vla_ros.model.normalize import load_data_layout

    directory = Path(checkpoint).expanduser()
    results: list[CheckResult] = []
    if not directory.is_dir():
        return [CheckResult("checkpoint files", FAIL, "a checkpoint directory", f"{directory} is not a directory")]
    try:
        model = read_config(directory)
        stats = load_checkpoint_norm_stats(directory)
        tokenizer = read_text_tokenizer(directory, model)
    except (ValueError, OSError) as e:
        return [CheckResult("checkpoint files", FAIL, "config.json, weights, norm stats, tokenizer", str(e))]
    weights = (directory / WEIGHTS_FILE).is_file() or (directory / WEIGHTS_INDEX_FILE).is_file()
    missing = [what for what, ok in (("weights (model.safetensors)", weights), ("norm stats", stats is not None),
                                     ("text tokenizer", tokenizer is not None)) if not ok]
    results.append(CheckResult("checkpoint files", FAIL if missing else PASS,
                               "config, weights, norm stats, tokenizer",
                               f"missing {', '.join(missing)}" if missing else f"all in {directory}"))
    layout = load_data_layout(directory / NORM_STATS_FILE) or {}
    if stats is not None:
        results += _dim_checks(config, stats, layout)
        results.append(_delta_check(config, model.delta_action_dims))
        results.append(_limits_check(config, stats, model.delta_action_dims))
    results += _model_input_checks(config, model, tokenizer)
    results.append(_step_check(config, layout))
    if bag is not None:
        results += bag_checks(config, bag, stats)
    return results


# ----------------------------------------------------------------------------- checkpoint vs config
def _dim_checks(config: RobotConfig, stats: dict, layout: dict) -> list[CheckResult]:
    out = []
    for what, key, names in (("state", "state", config.state_names), ("action", "actions", config.action_names)):
        dim = stats[key].dim if key in stats else None
        out.append(CheckResult(f"{what} dims", PASS if dim == len(names) else FAIL,
                               f"{len(names)} (config {what} vector)", f"norm stats '{key}': {dim}"))
        recorded = layout.get(f"{what}_names")
        if recorded is None:
            out.append(CheckResult(f"{what} names", WARN, "the config's names",
                                   "not recorded with the norm stats (openpi / LeRobot stats have none)"))
            continue
        wrong = [f"dim {i} trained as {r!r}, config {n!r}" for i, (r, n) in enumerate(zip(recorded, names))
                 if r != n]
        if len(recorded) != len(names):
            wrong.append(f"{len(recorded)} names trained, config has {len(names)}")
        out.append(CheckResult(f"{what} names", FAIL if wrong else PASS, "the config's names",
                               "; ".join(wrong) if wrong else f"the same {len(names)} names"))
    return out


def _delta_check(config: RobotConfig, delta_dims: Sequence[int]) -> CheckResult:
    names = config.action_names
    expected_text = (f"offsets on joints ({len(config.default_delta_action_dims)} of {len(names)}), "
                     f"grippers absolute")
    bad = [d for d in delta_dims if d >= len(names) or d >= config.state_dim or names[d] != config.state_names[d]
           or names[d] not in config.joints]
    if bad:
        return CheckResult("delta action dims", FAIL, expected_text,
                           f"dims {bad} are offsets but are not joint positions with the same state dim")
    grippers = [names[d] for d in delta_dims if is_gripper_joint(names[d])]
    text = f"{len(delta_dims)} of {len(names)} dims as offsets"
    if grippers:
        return CheckResult("delta action dims", WARN, expected_text,
                           f"gripper {', '.join(grippers)} as an offset (usually absolute); {text}")
    return CheckResult("delta action dims", PASS, expected_text,
                       f"{text}: {', '.join(names[d] for d in delta_dims)}" if delta_dims else "all absolute")


def _limits_check(config: RobotConfig, stats: dict, delta_dims: Sequence[int]) -> CheckResult:
    problems, warnings = [], []
    ranges = [("state", stats.get("state"), set())]
    ranges.append(("action", stats.get("actions"), set(delta_dims)))  # offsets are not positions
    for what, s, skip in ranges:
        if s is None:
            continue
        for i, joint in enumerate(config.joints):
            if i >= s.dim or i in skip:
                continue
            limits = config.joint_limits[joint]
            span = limits.upper - limits.lower
            lo, hi = float(s.q01[i]), float(s.q99[i])
            if lo < limits.lower - LIMIT_MARGIN * span or hi > limits.upper + LIMIT_MARGIN * span:
                problems.append(f"{what} {joint} {lo:.3g}..{hi:.3g} vs limits {limits.lower:.3g}..{limits.upper:.3g}")
            elif 0 < hi - lo < TINY_RANGE * span and what == "state":
                warnings.append(f"{joint} moves over {100 * (hi - lo) / span:.1f}% of its limits "
                                f"({lo:.3g}..{hi:.3g})")
    expected = f"q01..q99 inside joint limits ±{LIMIT_MARGIN:.0%}"
    if problems:
        return CheckResult("norm stats vs limits", FAIL, expected, "; ".join(problems))
    if warnings:
        return CheckResult("norm stats vs limits", WARN, expected, "; ".join(warnings))
    return CheckResult("norm stats vs limits", PASS, expected, f"all {len(config.joints)} joints inside")


def _model_input_checks(config: RobotConfig, model, tokenizer) -> list[CheckResult]:
    out = []
    slots = ", ".join(f"{c.name}->{c.slot}" for c in config.cameras)
    out.append(CheckResult("image slots", PASS if config.num_image_slots <= model.num_cameras else FAIL,
                           f"{config.num_image_slots} ({slots})", f"model has {model.num_cameras}"))
    sized = [c for c in config.cameras if c.width and c.height]
    small = [f"{c.name} {c.width}x{c.height}" for c in sized if max(c.width, c.height) < model.image_size]
    found = ", ".join(f"{c.name} {c.width}x{c.height}" for c in sized) or "no sizes in the config"
    out.append(CheckResult("image size", WARN if small else PASS,
                           f">= {model.image_size} px (model input {model.image_size}x{model.image_size})",
                           found + (f"; upscaled: {small}" if small else "")))
    expected = f"{model.text_tokenizer}, <= {model.vocab_size} ids"
    if tokenizer is None:
        out.append(CheckResult("text tokenizer", FAIL, expected, "none in the checkpoint (tokenizer.model or "
                                                                 "text_tokenizer.json)"))
    else:
        size = int(tokenizer.vocab_size)
        out.append(CheckResult("text tokenizer", PASS if size <= model.vocab_size else FAIL, expected,
                               f"{type(tokenizer).__name__}, {size} ids"))
    chunk = config.chunk
    out.append(CheckResult("horizon", PASS if chunk.horizon_steps <= model.action_horizon else FAIL,
                           f"chunk.horizon_steps {chunk.horizon_steps} <= model's",
                           f"model predicts {model.action_horizon} steps"))
    return out


def _step_check(config: RobotConfig, layout: dict) -> CheckResult:
    step = config.chunk.step_duration_s
    expected = f"chunk.step_duration_s {step} s = training data's"
    trained = layout.get("step_duration_s")
    if trained is None:
        return CheckResult("step duration", WARN, expected, "not recorded with the norm stats")
    ok = abs(float(trained) - step) <= 0.01 * step
    return CheckResult("step duration", PASS if ok else FAIL, expected, f"trained on {float(trained):g} s steps")


# ----------------------------------------------------------------------------- a recording
def bag_checks(config: RobotConfig, bag: str | Path, stats: dict | None) -> list[CheckResult]:
    """Checks of a recording: states against the norm stats, cameras alive, distinct, not swapped."""
    from ki_vla_ros.eval.bag_io import BagError
    from ki_vla_ros.eval.episodes import EpisodeReplay

    try:
        with EpisodeReplay(bag, config, every_s=config.chunk.step_duration_s) as replay:
            observations = [r.observation for r in replay.observations()]
    except BagError as e:
        return [CheckResult("bag", FAIL, "a bag with the config's topics", str(e))]
    if len(observations) < 2:
        return [CheckResult("bag", FAIL, "at least 2 synchronized observations", f"{len(observations)} in {bag}")]
    states = np.stack([o.state for o in observations])  # [T, joints]
    out = []
    if stats is not None and "state" in stats:
        s = stats["state"]
        outside = []
        for i, joint in enumerate(config.joints[:s.dim]):
            span = max(float(s.q99[i] - s.q01[i]), 0.05 * (config.joint_limits[joint].upper
                                                            - config.joint_limits[joint].lower))
            lo, hi = s.q01[i] - 0.25 * span, s.q99[i] + 0.25 * span
            share = float(np.mean((states[:, i] < lo) | (states[:, i] > hi)))
            if share > 0.2:
                outside.append(f"{joint} {states[:, i].min():.3g}..{states[:, i].max():.3g} vs "
                               f"{s.q01[i]:.3g}..{s.q99[i]:.3g} ({share:.0%} of frames)")
        out.append(CheckResult("bag state vs norm stats", WARN if outside else PASS,
                               "recorded joints inside the norm stats' q01..q99 (±25%)",
                               "; ".join(outside) or f"all joints, {len(states)} frames"))
    travel = float(np.max(states.max(0) - states.min(0)))
    moving = travel > MOVING_JOINT_RAD
    change = {}
    for camera in config.cameras:
        frames = np.stack([o.images[camera.slot] for o in observations]).astype(np.float32)
        change[camera.name] = float(np.abs(np.diff(frames, axis=0)).mean())
        if change[camera.name] == 0.0:
            status, found = FAIL, f"all {len(frames)} images identical (dead camera or frozen driver)"
        elif moving and change[camera.name] < STILL_IMAGE_LEVELS:
            status, found = WARN, (f"changes {change[camera.name]:.2f} levels/frame while joints travel "
                                   f"{travel:.2f} (covered, or the wrong topic?)")
        else:
            status, found = PASS, f"changes {change[camera.name]:.2f} levels/frame (joints travel {travel:.2f})"
        out.append(CheckResult(f"camera {camera.name}", status, f"images change (>= {STILL_IMAGE_LEVELS} "
                                                                 f"levels/frame when the arm moves)", found))
    same = []
    for a_i, a in enumerate(config.cameras):
        for b in config.cameras[a_i + 1:]:
            pairs = [(o.images[a.slot], o.images[b.slot]) for o in observations]
            if all(x.shape == y.shape for x, y in pairs):
                diff = np.mean([np.abs(x.astype(np.float32) - y).mean() for x, y in pairs])
                if diff < SAME_IMAGE_LEVELS:
                    same.append(f"{a.name} = {b.name} ({a.topic}, {b.topic})")
    out.append(CheckResult("cameras distinct", FAIL if same else PASS, "different images on every camera topic",
                           "; ".join(same) or f"{len(config.cameras)} cameras differ"))
    wrists = [c.name for c in config.cameras if any(w in c.name.lower() for w in WRIST_WORDS)]
    others = [c.name for c in config.cameras if c.name not in wrists]
    if moving and wrists and others:
        swapped = [w for w in wrists if all(change[w] < change[o] for o in others)]
        found = ", ".join(f"{n} {v:.2f}" for n, v in change.items())
        out.append(CheckResult("wrist camera motion", WARN if swapped else PASS,
                               f"{', '.join(wrists)} change most while the arm moves",
                               f"levels/frame: {found}" + (f"; {swapped} change least: swapped topics?"
                                                           if swapped else "")))
    return out


def checks_failed(results: Sequence[CheckResult]) -> bool:
    return any(r.status == FAIL for r in results)


def results_json(results: Sequence[CheckResult]) -> str:
    return json.dumps([r.__dict__ for r in results], indent=1)
