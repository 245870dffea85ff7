"""Open-loop replay evaluation of a policy on recorded bags.

    report = evaluate_bags(["ep1", "ep2.mcap"], "single_arm", Predictor.tiny_random(...), "out/")

For every bag: rebuild the observations exactly as the live node forms them (episodes.py:
runtime sync + assembly), run the same runtime `Policy` on each, and compare the predicted
chunk with what was recorded at the chunk's step times (metrics.py). Open loop: the input
is always the recorded observation; predictions are never fed back into anything.

Latency-aware mode: on the robot a chunk arrives `latency` after its observation (the
observation's age when the set completed + inference time) and the steps whose time has
passed are dropped (runtime/chunking.py). So only steps k >= ceil(latency / dt) are
compared; the compared part of the horizon moves right as latency grows. `latency_s`
replaces the inference time measured here (e.g. with the robot GPU's figure) so that a
CPU replay can stand in for the robot.

A bag that cannot be evaluated (corrupt, topics missing, names that do not match the
config, no usable observation) is recorded in the report with its error; the rest are
still evaluated. The oracle policies at the end know the answer and let tests check the
evaluator itself.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from ki_vla_ros.eval.bag_io import BagError
from ki_vla_ros.eval.episodes import EpisodeReplay, TargetChoice
from ki_vla_ros.eval.metrics import (
    ErrorStats, Window, action_ranges, action_units, first_executed_step, percentiles)
from ki_vla_ros.eval.report import write_report
from ki_vla_ros.runtime.action_chunk import ActionChunk, InferenceTimings
from ki_vla_ros.runtime.config import RobotConfig, load_robot_config
from ki_vla_ros.runtime.observation import Observation
from ki_vla_ros.runtime.policy import Policy, PolicyError


class PolicyLike(Protocol):
    def infer(self, observation: Observation, noise: np.ndarray | None = None) -> ActionChunk: ...


def as_policy(predictor_or_policy: Any, config: RobotConfig) -> PolicyLike:
    """A runtime Policy (or anything with infer()) as is; a Predictor wrapped in Policy."""
    if hasattr(predictor_or_policy, "infer"):
        return predictor_or_policy
    if hasattr(predictor_or_policy, "predict_chunk"):
        return Policy(predictor_or_policy, config)
    raise TypeError(f"{type(predictor_or_policy).__name__} is neither a Policy (infer) nor a "
                    "Predictor (predict_chunk)")


def load_policy(config: RobotConfig, checkpoint: str | None = None, device: str | None = None,
                torch_threads: int = 0) -> Policy:
    """The node's model loading (runtime/model_loading.py): 'tiny' or a checkpoint directory,
    with the node's torch thread choice (0 = auto, see set_torch_threads)."""
    from ki_vla_ros.runtime.model_loading import load_predictor, set_torch_threads

    set_torch_threads(torch_threads)
    return Policy(load_predictor(config, checkpoint, device=device), config)


def evaluate_bags(bags: Sequence[str | Path], config: RobotConfig | str | Path, predictor_or_policy: Any,
                  out_dir: str | Path, latency_aware: bool = False, *, latency_s: float | None = None,
                  every_s: float | None = None, instruction: str | None = None,
                  targets: TargetChoice = "auto", seed: int = 0, plots: bool = True,
                  progress: bool = True, policy_label: str | None = None) -> dict:
    """Evaluate each bag open-loop, write report.json, summary.md and plots to out_dir.

    every_s: use an observation at most this often (default: execute_steps * step_duration_s,
        how often the node asks for a chunk; 0 = every synchronized observation).
    latency_s: inference latency to assume instead of the measured one (latency-aware mode).
    seed: flow-matching noise per observation comes from this seed, so reruns agree.
    Returns the report dict (also in out_dir/report.json).
    """
    config = config if isinstance(config, RobotConfig) else load_robot_config(config)
    policy = as_policy(predictor_or_policy, config)
    horizon, dt = config.chunk.horizon_steps, config.chunk.step_duration_s
    ranges = action_ranges(config)
    overall = ErrorStats(config.action_names, ranges, horizon)
    windows: list[Window] = []
    bag_results: list[dict] = []
    started = time.perf_counter()
    for bag in bags:
        try:
            episode, episode_windows = _evaluate_bag(
                Path(bag), config, policy, latency_aware=latency_aware, latency_s=latency_s,
                every_s=every_s, instruction=instruction, targets=targets, seed=seed, progress=progress)
        except Exception as exc:  # one bad bag (or a policy crash on it) must not stop the rest
            failure = {"bag": str(bag), "status": "failed", "error_type": type(exc).__name__,
                       "error": str(exc), "topic": getattr(exc, "topic", None)}
            if not isinstance(exc, BagError):
                failure["traceback"] = traceback.format_exc(limit=6)
            bag_results.append(failure)
            if progress:
                tqdm.write(f"FAILED {bag}: {exc}", file=sys.stderr)
            continue
        for window in episode_windows:
            overall.add(window)
        windows.extend(episode_windows)
        bag_results.append(episode)
    wall_s = time.perf_counter() - started

    episodes = [b for b in bag_results if b["status"] == "ok"]
    ranked = sorted((e for e in episodes if e["mae_normalized"] is not None), key=lambda e: e["mae_normalized"])
    report = {
        "tool": "ki-vla eval-bag",
        "created_unix_s": round(time.time(), 3),
        "config": {"source": config.source, "robot": config.name,
                   "action_names": list(config.action_names), "horizon_steps": horizon,
                   "step_duration_s": dt, "ranges": [float(r) for r in ranges],
                   "units": action_units(config)},
        "policy": policy_label or _describe(policy),
        "settings": {"latency_aware": latency_aware, "latency_s": latency_s,
                     "every_s": every_s if every_s is not None else config.chunk.execute_steps * dt,
                     "targets": targets, "seed": seed, "instruction": instruction},
        "totals": {"bags": len(bag_results), "bags_ok": len(episodes),
                   "bags_failed": len(bag_results) - len(episodes), "windows": len(windows),
                   "wall_s": round(wall_s, 3),
                   "observations_per_s": round(len(windows) / wall_s, 3) if wall_s > 0 else None},
        "overall": overall.overall(),  # every dim, the still ones included
        # the headline: dims whose recorded targets moved (metrics.MOVING_FRACTION of their range)
        "overall_moving": {**overall.overall(overall.moving()),
                           "dims": [n for n, m in zip(config.action_names, overall.moving()) if m],
                           "still_dims": [n for n, m in zip(config.action_names, overall.moving()) if not m]},
        "per_dim": overall.per_dim(),
        "by_horizon_step": overall.by_step(dt),
        "latency": {
            "inference_ms": percentiles(w.inference_ms for w in windows),
            "effective_ms": percentiles(w.latency_s * 1e3 for w in windows),
            "first_compared_step": percentiles(w.first_compared_step for w in windows),
        },
        "bags": bag_results,
        "failed_bags": [{"bag": b["bag"], "error": b["error"]} for b in bag_results if b["status"] != "ok"],
        "best_episode": _episode_brief(ranked[0]) if ranked else None,
        "worst_episode": _episode_brief(ranked[-1]) if ranked else None,
    }
    write_report(report, windows, ranges, Path(out_dir), plots=plots)
    return report


def _evaluate_bag(path: Path, config: RobotConfig, policy: PolicyLike, *, latency_aware: bool,
                  latency_s: float | None, every_s: float | None, instruction: str | None,
                  targets: TargetChoice, seed: int, progress: bool) -> tuple[dict, list[Window]]:
    horizon, dt = config.chunk.horizon_steps, config.chunk.step_duration_s
    stats = ErrorStats(config.action_names, action_ranges(config), horizon)
    windows: list[Window] = []
    policy_errors: dict[str, int] = {}
    noise_shape = _noise_shape(policy, config)
    rng = np.random.default_rng(seed)
    with EpisodeReplay(path, config, every_s=every_s, instruction=instruction, targets=targets) as episode:
        bar = tqdm(total=episode.message_count, desc=path.name, unit="msg", disable=not progress,
                   leave=False, mininterval=0.5)
        with bar:
            for replayed in episode.observations(on_message=bar.update):
                observation = replayed.observation
                noise = rng.standard_normal(noise_shape).astype(np.float32) if noise_shape else None
                try:
                    chunk = policy.infer(observation, noise=noise)
                except PolicyError as exc:
                    policy_errors[str(exc)[:160]] = policy_errors.get(str(exc)[:160], 0) + 1
                    continue
                actions = np.asarray(chunk.actions, dtype=np.float64)[:horizon]
                times_s = chunk.start_time_s + dt * np.arange(len(actions))
                recorded, exists = episode.targets.sample(times_s)
                inference_ms = chunk.timings.total_ms if chunk.timings else chunk.inference_latency_s * 1e3
                assumed_s = latency_s if latency_s is not None else inference_ms * 1e-3
                latency = replayed.age_s + assumed_s
                lead_s = chunk.start_time_s - chunk.stamp_s
                first = first_executed_step(latency, dt, lead_s) if latency_aware else 0
                compared = exists.copy()
                compared[:first] = False
                window = Window(bag=str(path), stamp_s=observation.stamp_s, step_duration_s=dt,
                                predicted=actions, recorded=recorded, compared=compared,
                                inference_ms=inference_ms, latency_s=latency, first_compared_step=first,
                                bag_start_s=episode.bag.start_time_s - episode.clock_offset_s)
                stats.add(window)
                windows.append(window)
        counters = episode.counters.as_dict()
        if not windows:
            reasons = {**counters["reasons"], **policy_errors}
            offsets = episode.stamp_offset_problem() if counters["sets_emitted"] == 0 else ""
            raise BagError(path, f"no observation could be evaluated: {counters['sets_emitted']} "
                                 f"synchronized sets, {counters['invalid_observations']} invalid, "
                                 f"{sum(policy_errors.values())} policy errors; reasons: {reasons or 'none'}"
                                 + (f"; {offsets}" if offsets else ""))
        summary = stats.overall()
        warning = None
        if summary["compared"] == 0:
            if not (latency_aware and all(w.first_compared_step >= horizon for w in windows)):
                raise BagError(path, f"{len(windows)} chunks predicted but no recorded target lies within "
                                     f"any chunk's horizon ({horizon} x {dt} s); targets: "
                                     f"{episode.targets.sources}")
            latency_p50_s = percentiles(w.latency_s for w in windows)["p50"]
            warning = (f"every chunk arrived after its whole horizon (latency p50 {latency_p50_s:.3f} s >= "
                       f"{horizon} x {dt} s): on the robot none of its steps would have been executed")
        result = {
            "bag": str(path), "status": "ok", "windows": len(windows),
            "mae_normalized": summary["mae_normalized"], "rmse_normalized": summary["rmse_normalized"],
            "compared": summary["compared"],
            "per_dim": {n: {"mae": v["mae"], "rmse": v["rmse"]} for n, v in stats.per_dim().items()},
            "targets": episode.targets.sources, "clock_offset_s": episode.clock_offset_s,
            "duration_s": round(episode.bag.end_time_s - episode.bag.start_time_s, 3),
            "replay": counters, "policy_errors": policy_errors,
            "inference_ms": percentiles(w.inference_ms for w in windows),
        }
        if warning:
            result["warning"] = warning
            if progress:
                tqdm.write(f"WARNING {path}: {warning}")
    return result, windows


def _noise_shape(policy: PolicyLike, config: RobotConfig) -> tuple[int, int] | None:
    predictor = getattr(policy, "predictor", None)
    if predictor is None:
        return None
    return (predictor.horizon, predictor.action_dim)


def _describe(policy: PolicyLike) -> str:
    predictor = getattr(policy, "predictor", None)
    return f"{type(policy).__name__}({type(predictor).__name__})" if predictor else type(policy).__name__


def _episode_brief(episode: dict) -> dict:
    return {"bag": episode["bag"], "mae_normalized": episode["mae_normalized"],
            "rmse_normalized": episode["rmse_normalized"], "windows": episode["windows"]}


# ----------------------------------------------------------------------------- oracles


class TrajectoryOraclePolicy:
    """A policy that knows the recorded future: trajectory(times_s [H]) -> actions [H, D].

    For testing the evaluator: with offset 0 every error is exactly 0; an `offset`
    (scalar, [D] or [H, D]) gives errors equal to that offset. `latency_s` is the inference
    latency it reports, so latency-aware results are deterministic.
    """

    def __init__(self, config: RobotConfig, trajectory: Callable[[np.ndarray], np.ndarray],
                 offset: float | np.ndarray = 0.0, latency_s: float = 0.0):
        self.config = config
        self.trajectory = trajectory
        self.offset = np.asarray(offset, dtype=np.float64)
        self.latency_s = latency_s

    def infer(self, observation: Observation, noise: np.ndarray | None = None) -> ActionChunk:
        chunk = self.config.chunk
        times_s = observation.stamp_s + chunk.step_duration_s * np.arange(chunk.horizon_steps)
        actions = np.asarray(self.trajectory(times_s), dtype=np.float64) + self.offset
        latency_ms = self.latency_s * 1e3
        return ActionChunk(stamp_s=observation.stamp_s, start_time_s=observation.stamp_s,
                           step_duration_s=chunk.step_duration_s, action_names=self.config.action_names,
                           actions=actions, inference_latency_s=self.latency_s,
                           instruction=observation.prompt,
                           timings=InferenceTimings(0.0, latency_ms, latency_ms))


class HoldStatePolicy:
    """Baseline: repeat the current joint state for the whole chunk (zero base velocity).

    What a policy that has learnt nothing but "stay put" scores; a trained checkpoint
    should beat it clearly on any episode with motion.
    """

    def __init__(self, config: RobotConfig):
        self.config = config

    def infer(self, observation: Observation, noise: np.ndarray | None = None) -> ActionChunk:
        chunk = self.config.chunk
        row = np.zeros(self.config.action_dim)
        row[: len(self.config.joints)] = observation.state
        return ActionChunk(stamp_s=observation.stamp_s, start_time_s=observation.stamp_s,
                           step_duration_s=chunk.step_duration_s, action_names=self.config.action_names,
                           actions=np.tile(row, (chunk.horizon_steps, 1)), inference_latency_s=0.0,
                           instruction=observation.prompt, timings=InferenceTimings(0.0, 0.0, 0.0))
