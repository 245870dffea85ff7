"""The shipped demo checkpoint: the study's model, trained longer with the KI recipe.

    python benchmarks/ki_claims.py --make-demo-checkpoint ki_vla_ros/assets/demo_checkpoint
    (or: ki-vla make-demo-checkpoint)

single_arm (8 state / 8 action dims, cameras base + wrist in 2 slots), horizon 10. The stages:
  1. a word-level SentencePiece tokenizer fitted on the training text (DEMO_SIZE.text_tokenizer);
  2. the vision tower alone learns which block colours each patch shows and where
     (vision_pretraining.py, where_weight);
  3. the backbone learns "point to the <color> block" -> "column C row R" alone
     (point_pretrain_steps), then VQA, captions and pointing together (pretrain_steps);
  4. KI: FAST-token CE and flow matching with stop-gradient, co-trained on VQA, captions,
     pointing and planner subtasks (vlm_ratio).
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
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.model.inference import Predictor
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.model_loading import DEMO_CHECKPOINT_DIR
from ki_vla_ros.sim.tasks import start_reach_episode
from ki_vla_ros.train.experiment import evaluation as ev
from ki_vla_ros.train.experiment.batches import MixedSampler, ReachActionSampler, TextSampler
from ki_vla_ros.train.experiment.commands import DEMO_VLM_SCENES, SIZE_OPTIONS
from ki_vla_ros.train.experiment.fitting import FitConfig, fit
from ki_vla_ros.train.experiment.study import PRETRAIN_KINDS, StudySize, prepare_data, pretrain_backbone
from ki_vla_ros.train.experiment.tasks import (EVAL_SEED_OFFSET, PLANNER_TASK_TEMPLATES, POINT_KIND,
                                               SUBTASK_TEMPLATE, TEXT_KINDS, generate_reach_data)

# Words as tokens, a tower that knows where each colour is, and pointing questions: with all
# three the backbone can say where the named block is, which the step-0 chunk needs; and 30%
# of the action samples from step 0, where nothing else says where to go (README, "The demo
# checkpoint").
DEMO_SIZE = StudySize(train_episodes=1000, eval_episodes=20, pretrain_steps=500, vla_steps=8000, seeds=(0,),
                      eval_every=250, eval_samples=32, closed_loop_episodes=30, vqa_questions=100,
                      latency_reps=20, vlm_ratio=0.25, vision_pretrain_steps=1500, where_weight=3.0,
                      text_tokenizer="sentencepiece", point_pretrain_steps=3000, first_step_fraction=0.3)
DEMO_SEED = 0
# point_questions: pretraining and co-training also ask "point to the blue block" ->
# "column 3 row 2", the spatial fact the first chunk of an episode needs; POINT_REPEAT copies
# of each make them about a third of the co-training text.
POINT_REPEAT = 4
VLM_SEED_OFFSET = 10_000  # VLM-only scenes: seeds between the demonstrations' and the held-out ones
COLORS = ("red", "green", "blue", "yellow")


def make_demo_checkpoint(out_dir, robot: str = "single_arm", steps: int | None = None,
                         size: StudySize = DEMO_SIZE, log=print, snapshot_dir=None, threads: int = 1,
                         device: str = "cpu", model_overrides: dict | None = None,
                         time_budget_s: float | None = None, recipe: str = "ki",
                         vlm_scenes: int = DEMO_VLM_SCENES, point_questions: bool = True) -> str:
    """Train, write (float16) and evaluate the demo checkpoint; returns the evaluation summary.

    snapshot_dir: also save the model every 500 steps there (to watch a long run).
    device: where to train ("cuda" on a GPU machine); the evaluation runs on the CPU, as the demo does.
    model_overrides: KIVLAConfig fields to change from the study model (e.g. image_size).
    time_budget_s: instead of a step count, train as many steps as fit in this time (measured
    on 20 steps of a throw-away copy of the model first, so the learning-rate schedule still
    knows its length)."""
    out_dir = Path(out_dir)
    if steps is not None:
        size = dataclasses.replace(size, vla_steps=steps)
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    if size.train_episodes > VLM_SEED_OFFSET or VLM_SEED_OFFSET + vlm_scenes > EVAL_SEED_OFFSET:
        raise ValueError(f"train_episodes={size.train_episodes}, vlm_scenes={vlm_scenes}: the seed ranges would "
                         f"overlap; expected train_episodes <= {VLM_SEED_OFFSET} and "
                         f"vlm_scenes <= {EVAL_SEED_OFFSET - VLM_SEED_OFFSET}")
    data = prepare_data(robot, size, model_overrides)
    # Many more scenes for the VLM data than there are demonstrations: one frame each is
    # cheap to render, and a vision tower trained from scratch needs the variety to see.
    text_data = data.train
    if vlm_scenes:
        text_data = generate_reach_data(load_robot_config(robot),
                                        range(VLM_SEED_OFFSET, VLM_SEED_OFFSET + vlm_scenes),
                                        data.config.image_size, steps=1)
    extra_kinds = (POINT_KIND,) if point_questions else ()
    model, _ = pretrain_backbone(data, size, seed=DEMO_SEED, device=device, kinds=PRETRAIN_KINDS + extra_kinds,
                                 text_data=text_data)
    log(f"[demo-checkpoint] data + VLM pretraining done ({time.perf_counter() - t0:.0f} s)")
    actions = ReachActionSampler(data.train, data.config, model.text_tokenizer, data.fast, data.norm_stats,
                                 first_step_fraction=size.first_step_fraction)
    text_samples = text_data.text(TEXT_KINDS) + text_data.text(extra_kinds) * POINT_REPEAT
    text = TextSampler(text_data, data.config, model.text_tokenizer, text_samples)
    sampler = MixedSampler(actions, text, size.vlm_ratio)

    def fit_config(n_steps: int) -> FitConfig:
        return FitConfig(recipe=recipe, steps=n_steps, batch_size=size.batch_size, lr=size.vla_lr,
                         warmup_steps=100, seed=DEMO_SEED, device=device, vision_lr_scale=size.vision_lr_scale)

    if time_budget_s is not None:
        probe = fit(copy.deepcopy(model), sampler, fit_config(20))
        step_s = float(np.median([h["step_s"] for h in probe[5:]]))
        size = dataclasses.replace(size, vla_steps=max(100, int(time_budget_s / step_s)))
        log(f"[demo-checkpoint] {step_s * 1e3:.1f} ms per step on {device}: "
            f"{size.vla_steps} steps in {time_budget_s:.0f} s")

    def on_step(step, m):
        if step and step % 250 == 0:
            log(f"[demo-checkpoint] step {step}/{size.vla_steps} ({time.perf_counter() - t0:.0f} s)")
        if snapshot_dir is not None and step and step % 500 == 0:
            m.save_pretrained(Path(snapshot_dir) / f"step_{step}")

    history = fit(model, sampler, fit_config(size.vla_steps), on_step=on_step)
    model.to("cpu")
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:  # write-then-move: never a half-written asset
        staged = Path(tmp) / "ckpt"
        model.half().save_pretrained(staged)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(staged, out_dir)
    metrics = evaluate_checkpoint(out_dir, robot, size.closed_loop_episodes)
    options = dict(device=device, recipe=recipe, vlm_scenes=vlm_scenes, point_questions=point_questions)
    metrics.update(train_seconds=train_s, vla_steps=size.vla_steps, final_losses=history[-1],
                   weights_bytes=(out_dir / "model.safetensors").stat().st_size, **options,
                   vision_pretrain_steps=size.vision_pretrain_steps, vision_lr_scale=size.vision_lr_scale,
                   reproduce=reproduce_command(size, model_overrides, **options))
    (out_dir / "demo_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "README.md").write_text(readme(metrics))
    return format_metrics(metrics)


def reproduce_command(size: StudySize, model_overrides: dict | None, device: str = "cpu", recipe: str = "ki",
                      vlm_scenes: int = DEMO_VLM_SCENES, point_questions: bool = True) -> str:
    """The command line that trains this recipe again (the step count fixed, not a time budget)."""
    parts = ["python benchmarks/ki_claims.py --make-demo-checkpoint ki_vla_ros/assets/demo_checkpoint",
             f"--steps {size.vla_steps}"]
    if device != "cpu":
        parts.append(f"--device {device}")
    if recipe != "ki":
        parts.append(f"--recipe {recipe}")
    if vlm_scenes != DEMO_VLM_SCENES:
        parts.append(f"--vlm-scenes {vlm_scenes}")
    if not point_questions:
        parts.append("--no-point-questions")
    for field, (flag, _, _) in SIZE_OPTIONS.items():
        value = getattr(size, field)
        if value != getattr(DEMO_SIZE, field):
            parts.append(f"{flag} {value}" if isinstance(value, str) else f"{flag} {value:g}")
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
    from ki_vla_ros.model.network import KIVLA

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
    return f"""# Tiny demo checkpoint (single_arm)

Knowledge-insulated VLA (ki_vla_ros `tiny_study` config: the tiny preset shrunk to ~0.42M
parameters, horizon 10, 8 action dims, 2 camera slots: base, wrist) with a word-level
SentencePiece tokenizer fitted on the task's text (tokenizer.model), trained on the simulated
language-conditioned reach task: vision tower pretrained on patch colours and positions,
backbone pretrained on pointing, VQA and captions, then the KI recipe (FAST-token CE + VQA /
caption / pointing / planner-subtask co-training for the backbone, flow matching with
stop-gradient for the expert). Weights are float16 ({m['weights_bytes'] / 1e6:.2f} MB).
It moves toward the named block far more often than random weights, but mostly stops a few
centimetres short of it: a demo of the pipeline, not a useful robot policy.

Reproduce (about {m['train_seconds'] / 60:.0f} min on {'a GPU' if m.get('device', 'cpu') != 'cpu' else '2 CPU cores'}):

    {m['reproduce']}

Held-out closed-loop evaluation in SimRobot (demo_metrics.json):

```
{format_metrics(m)}
```
"""
