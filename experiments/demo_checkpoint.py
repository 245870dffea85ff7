"""The shipped demo checkpoint: the study's model, trained longer with the KI recipe.

    python -m experiments make-demo-checkpoint ki_vla_ros/assets/demo_checkpoint
    (from the repository root; the directory is required)

single_arm (8 state / 8 action dims, cameras base + wrist in 2 slots), horizon 10. The stages:
  1. a word-level SentencePiece tokenizer fitted on the training text (DEMO_SIZE.text_tokenizer);
  2. the vision tower alone learns which block colours each patch shows and where
     (vision_pretraining.py, where_weight);
  3. the backbone learns "point to the <color> block" -> "column C row R" alone
     (point_pretrain_steps), then VQA, captions and pointing together (pretrain_steps);
  4. KI: FAST-token CE and flow matching with stop-gradient, co-trained on VQA, captions,
     pointing and planner subtasks (vlm_ratio); the joint actions are offsets from the
     chunk's start state (delta_actions);
  5. DAgger (DEMO_DAGGER): the model drives the training scenes, the expert relabels from
     where it went, and the model trains on the growing aggregate.
So the one checkpoint serves the policy ("move to the red block" -> the arm moves toward
the red block) and the planner (generate_subtask(images, "tidy up the table: start with the
red block") -> "move to the red block"). Weights are stored as float16 (under 1 MB); the
loader casts them to the model's dtype. After writing, the checkpoint is reloaded with
Predictor.from_pretrained and evaluated closed loop in SimRobot on held-out scenes against
random weights (seeded); the numbers go to demo_metrics.json and README.md next to the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.model.checkpoint import CONFIG_FILE
from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.inference import Predictor
from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim.tasks import start_reach_episode
from experiments import evaluation as ev
from experiments.commands import DAGGER_OPTIONS, DEMO_VLM_SCENES, SIZE_OPTIONS, changed_flags
from experiments.stages import StageConfig, train_stage
from experiments.study import (PRETRAIN_KINDS, VLM_SEED_OFFSET, StudySize, cotraining_sampler, prepare_data,
                               pretrain_backbone, vlm_scene_data)
from experiments.tasks import (EVAL_SEED_OFFSET, PLANNER_TASK_TEMPLATES, POINT_KIND, SUBTASK_TEMPLATE, ReachData,
                               generate_reach_data)

# Words as tokens, a tower that knows where each colour is, and pointing questions: with all
# three the backbone can say where the named block is, which the step-0 chunk needs; and 30%
# of the action samples from step 0, where nothing else says where to go (docs/demo_checkpoint.md).
DEMO_SIZE = StudySize(train_episodes=1000, eval_episodes=20, pretrain_steps=500, vla_steps=8000, seeds=(0,),
                      eval_every=250, eval_samples=32, closed_loop_episodes=30, vqa_questions=100,
                      latency_reps=20, vlm_ratio=0.25, vision_pretrain_steps=1500, where_weight=3.0,
                      text_tokenizer="sentencepiece", point_pretrain_steps=3000, first_step_fraction=0.3,
                      delta_actions=True)
DEMO_SEED = 0
COLORS = ("red", "green", "blue", "yellow")
DEMO_CHECKPOINT = "ki_vla_ros/assets/demo_checkpoint"  # the shipped asset, from the repository root


def make_demo_checkpoint(out_dir, robot: str = "single_arm", steps: int | None = None,
                         size: StudySize = DEMO_SIZE, log=print, snapshot_dir=None, threads: int = 1,
                         device: str = "cpu", model_overrides: dict | None = None,
                         time_budget_s: float | None = None, recipe: str = "ki",
                         vlm_scenes: int = DEMO_VLM_SCENES, point_questions: bool = True,
                         dagger_settings: "DaggerSettings | None" = None, dagger_from=None) -> str:
    """Train, write (float16) and evaluate the demo checkpoint; returns the evaluation summary.

    snapshot_dir: also save the model every 500 steps there (to watch a long run), and each
    DAgger round's.
    device: where to train ("cuda" on a GPU machine); the evaluation runs on the CPU, as the demo does.
    model_overrides: KIVLAConfig fields to change from the study model (e.g. image_size).
    time_budget_s: instead of a step count, train as many steps as fit in this time (measured
    on 20 steps of a throw-away copy of the model first, so the learning-rate schedule still
    knows its length).
    dagger_settings: the DAgger rounds after the KI stage (default DEMO_DAGGER).
    dagger_from: skip stages 1-4 and run only the DAgger rounds, from this checkpoint."""
    out_dir = Path(out_dir)
    dagger_settings = DEMO_DAGGER if dagger_settings is None else dagger_settings
    if steps is not None:
        size = dataclasses.replace(size, vla_steps=steps)
    if size.train_episodes > VLM_SEED_OFFSET or VLM_SEED_OFFSET + vlm_scenes > EVAL_SEED_OFFSET:
        raise ValueError(f"train_episodes={size.train_episodes}, vlm_scenes={vlm_scenes}: the seed ranges would "
                         f"overlap; expected train_episodes <= {VLM_SEED_OFFSET} and "
                         f"vlm_scenes <= {EVAL_SEED_OFFSET - VLM_SEED_OFFSET}")
    if dagger_from is not None and (model_overrides or time_budget_s is not None):
        raise ValueError("dagger_from runs only the DAgger rounds on an existing checkpoint; model_overrides and "
                         "time_budget_s belong to the stages it skips")
    if dagger_from is not None and not (Path(dagger_from) / "model.safetensors").is_file():
        raise FileNotFoundError(f"dagger_from={str(dagger_from)!r} is not a checkpoint directory; expected "
                                f"model.safetensors in it")
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    options = dict(device=device, recipe=recipe, vlm_scenes=vlm_scenes, point_questions=point_questions)
    record: dict = {}
    with tempfile.TemporaryDirectory() as tmp:  # write-then-move: never a half-written asset
        base, demos, text_data = dagger_from, None, None
        if dagger_from is None:
            base = Path(tmp) / "ki"
            model, demos, text_data, history, size = _train_ki_stage(
                robot, size, model_overrides, time_budget_s, snapshot_dir, log, t0, **options)
            model.to("cpu").half().save_pretrained(base)
            record.update(vla_steps=size.vla_steps, final_losses=history[-1])
        rounds = dagger(base, Path(tmp) / "final", dagger_settings, size, robot, demos=demos, text_data=text_data,
                        log=log, snapshot_dir=snapshot_dir, **options)
        train_s = time.perf_counter() - t0
        _replace_dir(Path(tmp) / "final", out_dir)
    metrics = evaluate_checkpoint(out_dir, robot, size.closed_loop_episodes)
    metrics.update(train_seconds=train_s, **record, weights_bytes=(out_dir / "model.safetensors").stat().st_size,
                   **options, vision_pretrain_steps=size.vision_pretrain_steps, vision_lr_scale=size.vision_lr_scale,
                   delta_actions=size.delta_actions,
                   dagger={**dataclasses.asdict(dagger_settings), "rounds_run": rounds},
                   reproduce=reproduce_command(size, model_overrides, dagger_settings, **options))
    if dagger_from is not None:
        metrics["dagger_from"] = str(dagger_from)
    (out_dir / "demo_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "README.md").write_text(readme(metrics))
    return format_metrics(metrics)


def _train_ki_stage(robot: str, size: StudySize, model_overrides: dict | None, time_budget_s: float | None,
                    snapshot_dir, log, t0: float, device: str, recipe: str, vlm_scenes: int,
                    point_questions: bool) -> tuple[KIVLA, ReachData, ReachData, list[dict], StudySize]:
    """Stages 1-4: data, tokenizers, vision and VLM pretraining, then the KI stage. Returns the
    model, the demonstrations, the VLM scenes, the KI stage's history and the size (with the
    step count a time budget chose)."""
    data = prepare_data(robot, size, model_overrides)
    # Many more scenes for the VLM data than there are demonstrations: one frame each is
    # cheap to render, and a vision tower trained from scratch needs the variety to see.
    text_data = vlm_scene_data(robot, vlm_scenes, data.config.image_size) if vlm_scenes else data.train
    extra_kinds = (POINT_KIND,) if point_questions else ()
    model, _ = pretrain_backbone(data, size, seed=DEMO_SEED, device=device, kinds=PRETRAIN_KINDS + extra_kinds,
                                 text_data=text_data)
    log(f"[demo-checkpoint] data + VLM pretraining done ({time.perf_counter() - t0:.0f} s)")
    sampler = cotraining_sampler(model, data.train, text_data, size, point_questions)

    if time_budget_s is not None:
        probe = train_stage(copy.deepcopy(model), sampler, demo_stage(size, recipe, 20, device), every=5)
        step_s = (probe[-1]["seconds"] - probe[0]["seconds"]) / (probe[-1]["step"] - probe[0]["step"])
        size = dataclasses.replace(size, vla_steps=max(100, int(time_budget_s / step_s)))
        log(f"[demo-checkpoint] {step_s * 1e3:.1f} ms per step on {device}: "
            f"{size.vla_steps} steps in {time_budget_s:.0f} s")

    def on_step(step, m):
        if step % 250 == 0:
            log(f"[demo-checkpoint] step {step}/{size.vla_steps} ({time.perf_counter() - t0:.0f} s)")
        if snapshot_dir is not None and step % 500 == 0:
            m.save_pretrained(Path(snapshot_dir) / f"step_{step}")

    history = train_stage(model, sampler, demo_stage(size, recipe, size.vla_steps, device), on_step, every=250)
    return model, data.train, text_data, history, size


def demo_stage(size: StudySize, recipe: str, steps: int, device: str, lr_scale: float = 1.0,
               seed: int = DEMO_SEED) -> StageConfig:
    return StageConfig(recipe=recipe, steps=steps, batch_size=size.batch_size, lr=size.vla_lr * lr_scale,
                     warmup_steps=100, seed=seed, device=device, vision_lr_scale=size.vision_lr_scale)


# ------------------------------------------------------------------ DAgger
@dataclasses.dataclass(frozen=True)
class DaggerSettings:
    """Rounds of DAgger after the KI stage (Ross et al., 2011). Behaviour cloning alone never
    shows the policy a state off the expert's path, and its policy went wrong there: some
    held-out episodes drove off early and never came back (docs/demo_checkpoint.md). Each
    round, the current model drives every training scene for a random 0..max_lead_steps steps,
    then the expert demonstrates from wherever the arm is (sim.tasks.generate_episode lead_in);
    those episodes join the aggregate (the demonstrations and every earlier round's), and the
    model trains on it for `steps` more steps at lr_scale of the VLA learning rate (new
    warm-up and cosine decay), with the same co-training text."""

    rounds: int = 0
    steps: int = 2000
    lr_scale: float = 0.5
    max_lead_steps: int = 25

    def __post_init__(self):
        for name in ("rounds", "steps", "max_lead_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DaggerSettings.{name} is {value!r}; expected an integer >= 0")
        if not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise ValueError(f"DaggerSettings.lr_scale is {self.lr_scale!r}; expected a finite fraction > 0")


DEMO_DAGGER = DaggerSettings(rounds=4, steps=2000, lr_scale=0.5, max_lead_steps=25)
LEAD_STREAM = 2  # the lead-in length of a DAgger episode: its own random stream per (seed, round)


def policy_lead_in(predictor: Predictor, round_index: int, max_lead_steps: int):
    """lead_in for generate_reach_data: the predictor drives the seed's episode for a
    seed-and-round-determined 0..max_lead_steps steps, in chunks like the policy node."""
    chunk_fn = ev.flow_chunk_fn(predictor)

    def lead(seed: int, robot, task) -> float:
        steps = int(np.random.default_rng([seed, LEAD_STREAM, round_index]).integers(0, max_lead_steps + 1))
        dt = robot.config.chunk.step_duration_s
        ev.drive(robot, chunk_fn, task.instruction, steps, dt, robot.config.chunk.execute_steps)
        return steps * dt

    return lead


def dagger(checkpoint_dir, out_dir, settings: DaggerSettings, size: StudySize = DEMO_SIZE, robot: str = "single_arm",
           demos: ReachData | None = None, text_data: ReachData | None = None, recipe: str = "ki",
           device: str = "cpu", point_questions: bool = True, vlm_scenes: int = DEMO_VLM_SCENES,
           log=print, snapshot_dir=None) -> list[dict]:
    """settings.rounds of DAgger from the checkpoint at checkpoint_dir; writes the float16 result
    to out_dir and returns one record per round (episodes added, the aggregate's size, seconds,
    the last losses). demos / text_data: the training demonstrations and the
    VLM scenes (default: generated again from size and vlm_scenes, as make_demo_checkpoint does).
    snapshot_dir: also keep each round's checkpoint there (round_1, ...)."""
    config = load_robot_config(robot)
    image_size = KIVLAConfig.load(Path(checkpoint_dir) / CONFIG_FILE).image_size
    if demos is None:
        demos = generate_reach_data(config, range(size.train_episodes), image_size,
                                    action_noise_rad=size.demo_action_noise_rad)
    if text_data is None:
        text_data = vlm_scene_data(robot, vlm_scenes, image_size) if vlm_scenes else demos
    aggregate, current, records = demos, Path(checkpoint_dir), []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(settings.rounds):
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(r)
                # Rolled out on the CPU in float32, as the demo runs it; then trained on `device`.
                model = KIVLA.from_pretrained(str(current), device="cpu", dtype=torch.float32)
                recovery = generate_reach_data(config, range(size.train_episodes), image_size,
                                               lead_in=policy_lead_in(Predictor(model), r, settings.max_lead_steps))
            aggregate = aggregate.extended(recovery)
            log(f"[dagger] round {r + 1}/{settings.rounds}: {recovery.num_episodes} policy-led episodes "
                f"({time.perf_counter() - t0:.0f} s), {aggregate.num_episodes} in the aggregate")
            model.to(device)
            sampler = cotraining_sampler(model, aggregate, text_data, size, point_questions)
            history = train_stage(model, sampler, demo_stage(size, recipe, settings.steps, device, settings.lr_scale,
                                                             seed=DEMO_SEED + 1 + r))
            current = Path(tmp) / f"round_{r + 1}"
            model.to("cpu").half().save_pretrained(current)
            if snapshot_dir is not None:
                _replace_dir(current, Path(snapshot_dir) / current.name)
            records.append({"round": r + 1, "episodes_added": recovery.num_episodes,
                            "aggregate_episodes": aggregate.num_episodes, "seconds": time.perf_counter() - t0,
                            "final_losses": history[-1]})
            log(f"[dagger] round {r + 1} trained {settings.steps} steps ({time.perf_counter() - t0:.0f} s)")
        _replace_dir(current, Path(out_dir))
    return records


def _replace_dir(src: Path, dst: Path) -> None:
    """Copy src over dst through a staged copy, so dst is never half-written."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "ckpt"
        shutil.copytree(src, staged)
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(staged, dst)


def reproduce_command(size: StudySize, model_overrides: dict | None, dagger_settings: "DaggerSettings | None" = None,
                      device: str = "cpu", recipe: str = "ki", vlm_scenes: int = DEMO_VLM_SCENES,
                      point_questions: bool = True) -> str:
    """The command line that trains this recipe again (the step count fixed, not a time budget)."""
    parts = [f"python -m experiments make-demo-checkpoint {DEMO_CHECKPOINT}",
             f"--steps {size.vla_steps}"]
    if device != "cpu":
        parts.append(f"--device {device}")
    if recipe != "ki":
        parts.append(f"--recipe {recipe}")
    if vlm_scenes != DEMO_VLM_SCENES:
        parts.append(f"--vlm-scenes {vlm_scenes}")
    if not point_questions:
        parts.append("--no-point-questions")
    parts += changed_flags(size, DEMO_SIZE, SIZE_OPTIONS)
    parts += changed_flags(dagger_settings or DEMO_DAGGER, DEMO_DAGGER, DAGGER_OPTIONS)
    parts += [f"--model {k}={v}" for k, v in sorted((model_overrides or {}).items())]
    return " ".join(parts)


def evaluate_checkpoint(path, robot: str = "single_arm", episodes: int = 30, seed_offset: int = EVAL_SEED_OFFSET,
                        baseline: bool = True) -> dict:
    """Closed-loop success of the saved checkpoint on held-out scenes (their own instructions,
    then "move to the <color> block" for every color present), its planner subtasks, and the
    same closed loop with random weights of the same size. The flow noise is seeded, so the
    numbers repeat."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _evaluate_checkpoint(path, robot, episodes, seed_offset, baseline)


def _evaluate_checkpoint(path, robot: str, episodes: int, seed_offset: int, baseline: bool) -> dict:
    config = load_robot_config(robot)
    predictor = Predictor.from_pretrained(str(path), device="cpu", dtype="float32")
    seeds = [seed_offset + i for i in range(episodes)]
    out = {"checkpoint": str(path), "robot": robot,
           "own_instruction": _strip(ev.closed_loop_reach(config, seeds, ev.flow_chunk_fn(predictor)))}
    per_color = {c: [] for c in COLORS}
    for seed in seeds[: max(1, episodes // 3)]:
        robot_sim, _ = start_reach_episode(config, seed)
        for name in robot_sim.scene.names:
            color = name.split()[0]
            outcome = _run_named(config, seed, predictor, name)
            per_color[color].append(outcome)
    out["move_to_color"] = {c: ev.summarize_outcomes(o) for c, o in per_color.items() if o}
    out["subtask_accuracy"] = subtask_accuracy(predictor, config, seeds[: max(1, episodes // 3)])
    if baseline:
        model = new_model_like(predictor)
        out["random_weights_own_instruction"] = _strip(ev.closed_loop_reach(
            config, seeds, ev.flow_chunk_fn(Predictor(model))))
    return out


def _run_named(config, seed, predictor, target_name):
    """Reach episode of `seed`, instructed "move to the <target_name>"."""
    return ev.run_reach_episode(config, seed, ev.flow_chunk_fn(predictor), target=target_name,
                                instruction=SUBTASK_TEMPLATE.format(target=target_name))


def subtask_accuracy(predictor: Predictor, config, seeds) -> dict:
    hits, total, examples = 0, 0, []
    slots = sorted(config.cameras, key=lambda c: c.slot)
    for seed in seeds:
        robot, _ = start_reach_episode(config, seed, max_image_side_px=96)
        frames = robot.images(0.0)
        images = [frames[c.name] for c in slots]
        for i, name in enumerate(robot.scene.names):
            task = PLANNER_TASK_TEMPLATES[(seed + i) % len(PLANNER_TASK_TEMPLATES)].format(target=name)
            got = predictor.generate_subtask(images, task)
            want = SUBTASK_TEMPLATE.format(target=name)
            hits += got == want
            total += 1
            if len(examples) < 4:
                examples.append({"task": task, "subtask": got})
    return {"accuracy": hits / max(1, total), "questions": total, "examples": examples}


def new_model_like(predictor: Predictor):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        model = KIVLA(predictor.config, text_tokenizer=predictor.model.text_tokenizer,
                      fast_tokenizer=predictor.model.fast_tokenizer, norm_stats=predictor.model.norm_stats)
    return model


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "outcomes"}


def _reach_summary(s: dict) -> str:
    return (f"success {s['success_rate']:.2f}, wrong block {s['wrong_block_rate']:.2f}, ended nearest the named "
            f"block {s.get('nearest_is_target_rate', float('nan')):.2f}, median distance "
            f"{s.get('median_start_distance_m', float('nan')) * 100:.1f} -> {s['median_final_distance_m'] * 100:.1f} cm "
            f"over {s['episodes']} episodes")


def format_metrics(m: dict) -> str:
    own, rnd = m["own_instruction"], m.get("random_weights_own_instruction")
    lines = [f"demo checkpoint {m['checkpoint']} ({m['robot']})",
             f"  closed-loop reach, held-out scenes, their own instruction: {_reach_summary(own)}"]
    if rnd:
        lines.append(f"  same with random weights: {_reach_summary(rnd)}")
    for color, s in m["move_to_color"].items():
        lines.append(f"  'move to the {color} block': success {s['success_rate']:.2f}, ended nearest it "
                     f"{s['nearest_is_target_rate']:.2f} over {s['episodes']}")
    st = m["subtask_accuracy"]
    lines.append(f"  planner subtask exact match {st['accuracy']:.2f} over {st['questions']}; e.g. "
                 f"{st['examples'][0]['task']!r} -> {st['examples'][0]['subtask']!r}")
    return "\n".join(lines)


def readme(m: dict) -> str:
    own, rnd = m["own_instruction"], m.get("random_weights_own_instruction") or {}
    dagger = m.get("dagger", {})
    return f"""# Tiny demo checkpoint (single_arm)

Knowledge-insulated VLA (ki_vla_ros `tiny_study` config: the tiny preset shrunk to ~0.42M
parameters, horizon 10, 8 action dims{' as offsets from the measured joints' if m.get('delta_actions') else ''},
2 camera slots: base, wrist) with a word-level SentencePiece tokenizer fitted on the task's text
(tokenizer.model), trained on the simulated language-conditioned reach task: vision tower
pretrained on patch colours and positions, backbone pretrained on pointing, VQA and captions,
then the KI recipe (FAST-token CE + VQA / caption / pointing / planner-subtask co-training for
the backbone, flow matching with stop-gradient for the expert), then {dagger.get('rounds', 0)} DAgger
rounds (the policy drives, the scripted expert relabels). Weights are float16
({m['weights_bytes'] / 1e6:.2f} MB).

On held-out scenes it ends within 3 cm of the block its instruction names in
{own['success_rate']:.0%} of episodes (random weights: {rnd.get('success_rate', float('nan')):.0%}): a demo of the
pipeline on a toy task, not a robot policy.

Reproduce (about {m['train_seconds'] / 60:.0f} min on {'a GPU' if m.get('device', 'cpu') != 'cpu' else '2 CPU cores'}):

    {m['reproduce']}

Held-out closed-loop evaluation in SimRobot (demo_metrics.json):

```
{format_metrics(m)}
```
"""
