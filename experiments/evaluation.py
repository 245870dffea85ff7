"""What the study measures, each as a small function a test can check on hand-made cases.

    action_error        mean squared error of predicted normalized action chunks on held-out
                        samples, over the action dims that move in the data (flow: fixed noise,
                        10 Euler steps; FAST: greedy decoding, an undecodable chunk scores as
                        predicting all zeros, the mean action)
    steps_to_reach      first evaluated step whose error is at or below a target
    answer_accuracy / vqa_accuracy   exact-match accuracy of greedy answers
    run_reach_episode / closed_loop_reach   the policy drives SimRobot (no ROS) on a seed's
                        scene with the seed's instruction, in chunks of execute_steps, like
                        policy_node; success = gripper within REACH_TOLERANCE_M of the named
                        block at the end, "wrong" = it ended on another block
    run_switch_episode / closed_loop_switch   the same with the instruction changed to another
                        block part-way through the episode
    latency_ms          median and p99 wall time of calls after warm-up, taking turns
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import numpy as np
import torch

from ki_vla_ros.model.inference import Predictor, prepare_inputs
from ki_vla_ros.model.network import KIVLA, ModelInputs
from ki_vla_ros.runtime.config import RobotConfig
from ki_vla_ros.sim.robot import REACH_TOLERANCE_M, SimRobot
from ki_vla_ros.sim.tasks import ReachTask, start_reach_episode

FLOW, FAST = "flow", "fast"


# ------------------------------------------------------------------ action error
def chunk_mse(predicted: np.ndarray, expected: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean over samples of the per-sample MSE of [N, H, D] chunks. An invalid row (valid False,
    or non-finite) scores as a prediction of zeros: the mean normalized action."""
    predicted = np.array(predicted, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if predicted.shape != expected.shape:
        raise ValueError(f"predicted chunks have shape {predicted.shape}; expected {expected.shape}")
    bad = ~np.isfinite(predicted).all(axis=(1, 2))
    if valid is not None:
        bad |= ~np.asarray(valid, dtype=bool)
    predicted[bad] = 0.0
    return float(((predicted - expected) ** 2).mean())


def predict_normalized_chunks(model: KIVLA, batch: ModelInputs, decoder: str,
                              noise: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> normalized chunks [B, H, Da] (Da = the robot's action dims) and valid [B]."""
    da = model.norm_stats["actions"].dim
    with torch.inference_mode():
        if decoder == FLOW:
            out = model.sample_actions(batch, noise=noise)[:, :, :da].numpy()
            return out, np.ones(out.shape[0], dtype=bool)
        fast = model.decode_fast_actions(batch)
        return fast.actions[:, :, :da].numpy(), fast.valid.numpy()


def active_action_dims(stats) -> np.ndarray:
    """Indices of the action dims that move in the data (q01 < q99); the others are constant
    (single_arm: the five joints the planar sim never moves, and the open gripper) and would
    only dilute the error."""
    return np.flatnonzero(stats.q99 - stats.q01 > 1e-4)


def action_error(model: KIVLA, batch, decoder: str, noise_seed: int = 0) -> dict[str, float]:
    """MSE of predicted vs demonstrated normalized chunks of a held-out TrainingBatch, over the
    action dims that move in the data."""
    c = model.config
    g = torch.Generator().manual_seed(noise_seed)
    noise = torch.randn(batch.batch_size, c.action_horizon, c.action_dim, generator=g)
    dims = active_action_dims(model.norm_stats["actions"])
    predicted, valid = predict_normalized_chunks(model, batch, decoder, noise)
    expected = batch.actions[:, :, dims].numpy()
    return {"mse": chunk_mse(predicted[:, :, dims], expected, valid), "valid_fraction": float(valid.mean())}


def steps_to_reach(steps: Sequence[int], errors: Sequence[float], target: float) -> int | None:
    """The first step whose error is <= target (None when no evaluated step gets there)."""
    if len(steps) != len(errors):
        raise ValueError(f"{len(steps)} steps but {len(errors)} errors; expected one error per step")
    for step, error in zip(steps, errors):
        if error <= target:
            return int(step)
    return None


# ------------------------------------------------------------------ VQA
def answer_accuracy(predicted: Sequence[str], expected: Sequence[str]) -> float:
    """Exact match after stripping and lower-casing; 0.0 for no questions is an error."""
    if len(predicted) != len(expected) or not expected:
        raise ValueError(f"{len(predicted)} answers for {len(expected)} questions; expected the same, > 0")
    hits = sum(p.strip().lower() == e.strip().lower() for p, e in zip(predicted, expected))
    return hits / len(expected)


def generate_answers(model: KIVLA, text_sampler, samples, batch_size: int = 64,
                     max_new_tokens: int = 24) -> list[str]:
    answers = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i: i + batch_size]
        batch = text_sampler.batch_at(chunk)
        with torch.inference_mode():
            ids = model.generate_text(batch, max_new_tokens)
        answers += [model.text_tokenizer.decode(x) for x in ids]
    return answers


def vqa_accuracy(model: KIVLA, text_sampler, samples) -> float:
    answers = generate_answers(model, text_sampler, samples, max_new_tokens=8)
    return answer_accuracy(answers, [s.answer for s in samples])


# ------------------------------------------------------------------ closed loop
@dataclasses.dataclass(frozen=True)
class ReachOutcome:
    seed: int
    instruction: str
    target: str
    success: bool  # ended on the named block
    wrong_block: bool  # ended on another block
    final_distance_m: float
    invalid_chunks: int  # chunks the policy could not produce (robot held still)
    start_distance_m: float = float("nan")
    nearest_is_target: bool = False  # ended nearer the named block than any other block


ChunkFn = Callable[[list[np.ndarray], np.ndarray, str], np.ndarray | None]


def flow_chunk_fn(predictor: Predictor) -> ChunkFn:
    return lambda images, state, prompt: predictor.predict_chunk(images, state, prompt)


def fast_chunk_fn(predictor: Predictor) -> ChunkFn:
    """Autoregressive FAST decoding through the same preprocessing; None when undecodable."""
    model = predictor.model

    def chunk(images, state, prompt):
        inputs = prepare_inputs(images, state, prompt, config=predictor.config,
                                text_tokenizer=model.text_tokenizer, state_stats=predictor.state_stats)
        with torch.inference_mode():
            out = model.decode_fast_actions(inputs.to(model.device))
        if not bool(out.valid[0]):
            return None
        return predictor.to_robot_units(out.actions[0].numpy(), state)

    return chunk


def run_reach_episode(config: RobotConfig, seed: int, chunk_fn: ChunkFn, *, steps: int = 30,
                      execute_steps: int | None = None, max_image_side_px: int | None = 96,
                      target: str | None = None, instruction: str | None = None) -> ReachOutcome:
    """The policy runs the seed's reach episode: every execute_steps it sees the cameras and
    the joint state and returns a chunk; the first execute_steps actions are commanded like
    demonstration actions (a position target due one step later).

    target / instruction: another block of the scene to go to (default: the seed's task), and
    the words to ask for it with (default: the seed's instruction, or "move to the <target>").
    """
    dt = config.chunk.step_duration_s
    execute_steps = execute_steps or config.chunk.execute_steps
    robot, task = start_reach_episode(config, seed, dt, max_image_side_px=max_image_side_px)
    if target is not None:
        task = ReachTask(target, instruction or f"move to the {target}")
    prompt = instruction or task.instruction
    start_distance_m = robot.distance_to(task.target)
    invalid = drive(robot, chunk_fn, prompt, steps, dt, execute_steps)
    robot.step(steps * dt)
    return outcome_at_end(robot, seed, prompt, task.target, invalid, start_distance_m)


def outcome_at_end(robot: SimRobot, seed: int, prompt: str, target: str, invalid: int,
                   start_distance_m: float) -> ReachOutcome:
    """Where the episode left the gripper, judged against `target`."""
    others = [n for n in robot.scene.names if n != target]
    final_distance_m = robot.distance_to(target)
    return ReachOutcome(seed=seed, instruction=prompt, target=target,
                        success=robot.reached(target, REACH_TOLERANCE_M),
                        wrong_block=any(robot.reached(n, REACH_TOLERANCE_M) for n in others),
                        final_distance_m=final_distance_m, invalid_chunks=invalid, start_distance_m=start_distance_m,
                        nearest_is_target=all(final_distance_m < robot.distance_to(n) for n in others))


def run_switch_episode(config: RobotConfig, seed: int, chunk_fn: ChunkFn, *, switch_step: int = 10,
                       steps: int = 30, execute_steps: int | None = None,
                       max_image_side_px: int | None = 96) -> dict:
    """The seed's reach episode with its instruction changed part-way: the policy is told the seed's
    instruction for switch_step steps, then "move to the <other block>" (the next block of the
    scene after the first target, in scene order) for the rest. Returns the ReachOutcome toward
    the new block as a dict, plus "ended_at_first": the gripper ended on the first block (the
    policy kept following the old instruction)."""
    outcome, ended_at_first = _switch_episode(config, seed, chunk_fn, switch_step, steps, execute_steps,
                                              max_image_side_px)
    return {**dataclasses.asdict(outcome), "ended_at_first": ended_at_first}


def _switch_episode(config: RobotConfig, seed: int, chunk_fn: ChunkFn, switch_step: int, steps: int,
                    execute_steps: int | None, max_image_side_px: int | None) -> tuple[ReachOutcome, bool]:
    if not 0 < switch_step < steps:
        raise ValueError(f"switch_step is {switch_step}; expected a step between 0 and steps={steps}, exclusive")
    dt = config.chunk.step_duration_s
    execute_steps = execute_steps or config.chunk.execute_steps
    robot, first = start_reach_episode(config, seed, dt, max_image_side_px=max_image_side_px)
    names = list(robot.scene.names)
    if len(names) < 2:
        raise ValueError(f"seed {seed}'s scene has only {names}; a switched instruction needs 2 or more blocks")
    second = names[(names.index(first.target) + 1) % len(names)]
    prompt = f"move to the {second}"
    invalid = drive(robot, chunk_fn, first.instruction, switch_step, dt, execute_steps)
    start_distance_m = robot.distance_to(second)
    invalid += drive(robot, chunk_fn, prompt, steps - switch_step, dt, execute_steps, start_s=switch_step * dt)
    robot.step(steps * dt)
    return (outcome_at_end(robot, seed, prompt, second, invalid, start_distance_m),
            robot.reached(first.target, REACH_TOLERANCE_M))


def closed_loop_switch(config: RobotConfig, seeds: Sequence[int], chunk_fn: ChunkFn, *, switch_step: int = 10,
                       steps: int = 30, execute_steps: int | None = None, max_image_side_px: int | None = 96) -> dict:
    """run_switch_episode on every seed: summarize_outcomes toward the new block, and the rate of
    episodes that ended on the first block instead."""
    runs = [_switch_episode(config, int(s), chunk_fn, switch_step, steps, execute_steps, max_image_side_px)
            for s in seeds]
    return {**summarize_outcomes([outcome for outcome, _ in runs]),
            "ended_at_first_rate": sum(stayed for _, stayed in runs) / len(runs)}


def drive(robot: SimRobot, chunk_fn: ChunkFn, prompt: str, steps: int, dt: float, execute_steps: int,
          start_s: float = 0.0) -> int:
    """The policy drives `robot` for `steps` steps of dt from start_s, asking for a chunk every
    execute_steps; returns how many chunks it could not produce (the robot held still)."""
    slots = sorted(robot.config.cameras, key=lambda c: c.slot)
    chunk, invalid = None, 0
    for t in range(steps):
        now = start_s + t * dt
        k = t % execute_steps
        if k == 0:
            frames = robot.images(now)
            chunk = chunk_fn([frames[c.name] for c in slots], robot.state_vector(), prompt)
            if chunk is None:
                invalid += 1
        robot.step(now)
        if chunk is not None and k < len(chunk):
            robot.apply_action(np.asarray(chunk[k], dtype=np.float64), now, dt)
    return invalid


def summarize_outcomes(outcomes: Sequence[ReachOutcome]) -> dict[str, float]:
    if not outcomes:
        raise ValueError("no episodes to summarize")
    n = len(outcomes)
    return {"episodes": n, "success_rate": sum(o.success for o in outcomes) / n,
            "wrong_block_rate": sum(o.wrong_block for o in outcomes) / n,
            "median_final_distance_m": float(np.median([o.final_distance_m for o in outcomes])),
            "median_start_distance_m": float(np.median([o.start_distance_m for o in outcomes])),
            "nearest_is_target_rate": sum(o.nearest_is_target for o in outcomes) / n,
            "invalid_chunks": int(sum(o.invalid_chunks for o in outcomes))}


def closed_loop_reach(config: RobotConfig, seeds: Sequence[int], chunk_fn: ChunkFn, **kwargs) -> dict:
    outcomes = [run_reach_episode(config, int(s), chunk_fn, **kwargs) for s in seeds]
    return {**summarize_outcomes(outcomes), "outcomes": [dataclasses.asdict(o) for o in outcomes]}


# ------------------------------------------------------------------ latency
def latency_ms(calls: dict[str, Callable[[], object]], reps: int = 20,
               warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median and p99 wall time (ms) of each named call after warm-up. The calls take turns in
    every round, so they all see the same machine load."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for rep in range(warmup + reps):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            if rep >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "reps": reps}
            for name, t in times.items()}


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean and (population) std over the values that are not None / NaN, and how many those were."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    return float(np.mean(vals)), float(np.std(vals)), len(vals)
