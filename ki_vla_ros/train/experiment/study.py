"""The small-scale study of the KI paper's claims (Driess et al., 2025), end to end.

    1. data        reach demos + VQA/captions on train seeds; held-out eval seeds
    2. pretrain    the backbone on VQA + captions only (recipe "fast" on text batches: next-token
                   CE), the stand-in for PaliGemma's web pretraining; one backbone for all runs
    3. VLA         per recipe and seed, from that backbone (the expert re-initialised per seed):
                     ki     CE (FAST tokens + co-trained VLM text) + flow, stop-gradient K/V
                     joint  the same losses without the stop-gradient
                     pi0    flow only, no co-training (π0 / π0.5 flow training)
                     fast   CE only, actions decoded autoregressively (π0-FAST)
                   the held-out action error is measured every eval_every steps
    4. evaluate    steps to the target action error; VQA accuracy after VLA training; closed-loop
                   success at reaching the named block in SimRobot; flow vs FAST latency

Claims tested: (1) π0-style training needs ~7.5x more steps than KI, (2) KI keeps the VLM's
knowledge, (3) better language following, (4) the flow expert is much faster at inference
than autoregressive FAST decoding.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ki_vla_ros.model.config import RECIPES, TEXT_TOKENIZERS, KIVLAConfig
from ki_vla_ros.model.fast import FASTTokenizer
from ki_vla_ros.model.inference import Predictor
from ki_vla_ros.model.network import KIVLA, ActionExpert, count_parameters
from ki_vla_ros.model.text_tokenizer import SentencePieceTokenizer
from ki_vla_ros.runtime.config import RobotConfig, load_robot_config
from ki_vla_ros.train.experiment import evaluation as ev
from ki_vla_ros.train.experiment.batches import (MixedSampler, ReachActionSampler, TextSampler,
                                                 check_first_step_fraction, fit_norm_stats, normalized_chunks)
from ki_vla_ros.train.experiment.fitting import FitConfig, check_vision_lr_scale, fit
from ki_vla_ros.train.experiment.tasks import (EVAL_SEED_OFFSET, POINT_KIND, ReachData, generate_reach_data,
                                               tokenizer_corpus)
from ki_vla_ros.train.experiment.vision_pretraining import frames, pretrain_vision_tower

# The tiny preset shrunk so that the whole study fits a 2-core CPU: same architecture
# (SigLIP-style tower, Gemma backbone, adaRMSNorm expert sharing depth/heads/head_dim), ~0.42M
# parameters, 8 action dims (single_arm; no padding to 32).
STUDY_MODEL = dict(
    name="tiny_study", vision_width=48, vision_depth=1, vision_mlp_dim=96, vision_num_heads=2,
    width=64, depth=3, mlp_dim=128, num_heads=2, num_kv_heads=1, head_dim=32,
    expert_width=64, expert_depth=3, expert_mlp_dim=128, expert_num_heads=2, expert_num_kv_heads=1,
    expert_head_dim=32,
)
PRETRAIN_KINDS = ("vqa", "caption")  # "web" data; planner subtasks are robot data
TEXT_PIECES = 600  # below the FAST ids of the tiny vocabulary (1024 - 128 - 256 = 640)


def study_model_config(action_dim: int, num_cameras: int = 2) -> KIVLAConfig:
    """The study model for a robot with action_dim actions and num_cameras image slots."""
    return dataclasses.replace(KIVLAConfig.preset("tiny"), action_dim=action_dim, num_cameras=num_cameras,
                               **STUDY_MODEL)


@dataclasses.dataclass(frozen=True)
class StudySize:
    train_episodes: int
    eval_episodes: int
    pretrain_steps: int
    vla_steps: int
    seeds: tuple[int, ...]
    eval_every: int
    eval_samples: int  # held-out chunks for the action error
    closed_loop_episodes: int
    vqa_questions: int
    latency_reps: int
    batch_size: int = 16
    pretrain_lr: float = 2e-3
    vla_lr: float = 1.5e-3
    vlm_ratio: float = 0.25  # co-training fraction for the CE recipes (ki, joint, fast)
    # The vision tower: first trained alone to name the block colours in each patch (the
    # stand-in for SigLIP's pretraining, vision_pretraining.py), then at vision_lr_scale of
    # the learning rate in every later stage (0: frozen). Trained from scratch through the
    # language model's loss instead, its features collapse (docs/demo_checkpoint.md).
    vision_pretrain_steps: int = 600
    vision_lr_scale: float = 0.0
    # ... and, with where_weight > 0, also where in the patch each colour is (vision_pretraining.py).
    where_weight: float = 0.0
    # "byte" (the tiny preset's) or "sentencepiece": a BPE model of at most TEXT_PIECES pieces
    # fitted on the training text (tasks.tokenizer_corpus), words as tokens.
    text_tokenizer: str = "byte"
    # A first VLM stage on "point to the <color> block" -> "column c row r" alone, before the
    # mixed one (pretrain_backbone).
    point_pretrain_steps: int = 0
    # Executed-action noise of the training demonstrations (sim.tasks.generate_episode: the
    # expert's labels correct it); held-out episodes are always clean.
    demo_action_noise_rad: float = 0.0
    # The share of VLA action samples that start at step 0 (batches.ReachActionSampler).
    first_step_fraction: float = 0.0
    # Joint actions as offsets from the chunk's start state (KIVLAConfig.delta_action_dims):
    # the same normalized error is then a far smaller error in radians.
    delta_actions: bool = False
    # Held-out MSE (normalized, moving dims) that counts as "trained" for claim 1. For scale:
    # predicting the mean action scores ~0.4; sampling from the unconditional action
    # distribution ~0.7-0.8.
    target_mse: float = 0.2

    def __post_init__(self):
        check_vision_lr_scale(self.vision_lr_scale)
        for name in ("vision_pretrain_steps", "point_pretrain_steps", "where_weight", "demo_action_noise_rad"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 0 (0: off)")
        check_first_step_fraction(self.first_step_fraction)
        if self.text_tokenizer not in TEXT_TOKENIZERS:
            raise ValueError(f"text_tokenizer={self.text_tokenizer!r}: expected one of {TEXT_TOKENIZERS}")


SIZES = {
    "quick": StudySize(train_episodes=60, eval_episodes=12, pretrain_steps=60, vla_steps=60, seeds=(0, 1),
                       eval_every=20, eval_samples=16, closed_loop_episodes=4, vqa_questions=48,
                       latency_reps=10, target_mse=0.2),
    "default": StudySize(train_episodes=300, eval_episodes=30, pretrain_steps=300, vla_steps=300,
                         seeds=(0, 1, 2), eval_every=50, eval_samples=32, closed_loop_episodes=8,
                         vqa_questions=100, latency_reps=20, target_mse=0.2),
    # Where the flow expert starts to use the prefix (~1500 KI steps in the demo run): hours on
    # 2 CPU cores, so not the default.
    "long": StudySize(train_episodes=400, eval_episodes=30, pretrain_steps=300, vla_steps=4000,
                      seeds=(0, 1, 2), eval_every=250, eval_samples=32, closed_loop_episodes=20,
                      vqa_questions=100, latency_reps=20, target_mse=0.2),
}


# ---------------------------------------------------------------------------- stages
@dataclasses.dataclass
class StudyData:
    train: ReachData
    eval: ReachData
    norm_stats: dict
    fast: FASTTokenizer
    config: KIVLAConfig
    text_tokenizer: SentencePieceTokenizer | None = None  # None: the config's byte tokenizer


def prepare_data(robot: str, size: StudySize, model_overrides: dict | None = None) -> StudyData:
    """model_overrides: KIVLAConfig fields to change from the study model (image_size also
    sets the size the demonstrations' images are stored at)."""
    cfg_robot = load_robot_config(robot)
    config = dataclasses.replace(study_model_config(cfg_robot.action_dim, cfg_robot.num_image_slots),
                                 **(model_overrides or {}))
    train = generate_reach_data(cfg_robot, range(size.train_episodes), config.image_size,
                                action_noise_rad=size.demo_action_noise_rad)
    held_out = generate_reach_data(cfg_robot, range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + size.eval_episodes),
                                   config.image_size)
    if size.delta_actions:
        config = dataclasses.replace(config, delta_action_dims=joint_action_dims(cfg_robot))
    stats = fit_norm_stats(train, config.action_horizon, config.delta_action_dims)
    chunks = normalized_chunks(train, stats, config.action_horizon, config.delta_action_dims)
    fast = FASTTokenizer.fit(chunks.reshape(-1, *chunks.shape[2:]), vocab_size=config.fast_vocab_size)
    text_tokenizer = None
    if size.text_tokenizer == "sentencepiece":
        config = dataclasses.replace(config, text_tokenizer="sentencepiece")
        text_tokenizer = SentencePieceTokenizer.fit(tokenizer_corpus(train), TEXT_PIECES, vocab_size=config.vocab_size)
        first_fast_id = fast.to_backbone_ids([fast.vocab_size - 1], config.vocab_size)[0]
        if text_tokenizer.text_vocab > first_fast_id:
            raise ValueError(f"the fitted text tokenizer has {text_tokenizer.text_vocab} pieces; the FAST ids "
                             f"start at {first_fast_id} (vocab_size {config.vocab_size})")
    return StudyData(train, held_out, stats, fast, config, text_tokenizer)


def joint_action_dims(robot: RobotConfig) -> tuple[int, ...]:
    """The action dims that are joint position targets with the same index in the state."""
    return tuple(i for i, name in enumerate(robot.action_names)
                 if i < len(robot.state_names) and robot.state_names[i] == name and name in robot.joints)


def new_model(data: StudyData, seed: int) -> KIVLA:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return KIVLA(data.config, text_tokenizer=data.text_tokenizer, fast_tokenizer=data.fast,
                     norm_stats=data.norm_stats)


def pretrain_backbone(data: StudyData, size: StudySize, seed: int = 0, device: str = "cpu",
                      kinds: tuple[str, ...] = PRETRAIN_KINDS,
                      text_data: ReachData | None = None) -> tuple[KIVLA, list[dict]]:
    """VLM pretraining on VQA + captions (+ the given text kinds): next-token CE trains the
    backbone only, after size.vision_pretrain_steps of the tower alone on the patch colours
    (and, with size.where_weight, their positions) of the same scenes, and after
    size.point_pretrain_steps on pointing questions alone. text_data: the scenes (default:
    the training episodes'). The model is returned on `device`; the history is the last stage's."""
    model = new_model(data, seed).to(device)
    text_data = text_data if text_data is not None else data.train
    if size.vision_pretrain_steps:
        pretrain_vision_tower(model, frames(text_data), size.vision_pretrain_steps, seed=seed,
                              where_weight=size.where_weight)
    history = []
    for stage_kinds, steps in (((POINT_KIND,), size.point_pretrain_steps), (kinds, size.pretrain_steps)):
        if not steps:
            continue
        sampler = TextSampler(text_data, data.config, model.text_tokenizer, text_data.text(stage_kinds))
        history = fit(model, sampler, FitConfig(recipe="fast", steps=steps, batch_size=size.batch_size,
                                                lr=size.pretrain_lr, warmup_steps=max(1, steps // 10),
                                                seed=seed, device=device, vision_lr_scale=size.vision_lr_scale),
                      module=model.backbone)
    return model, history


def decoder_of(recipe: str) -> str:
    return ev.FAST if recipe == "fast" else ev.FLOW


def eval_action_batch(data: StudyData, model: KIVLA, n: int, seed: int = 0):
    """A fixed held-out batch of n (episode, step) samples from the eval seeds."""
    rng = np.random.default_rng(seed)
    sampler = ReachActionSampler(data.eval, data.config, model.text_tokenizer, data.fast, data.norm_stats)
    index = list(zip(rng.integers(data.eval.num_episodes, size=n).tolist(),
                     rng.integers(data.eval.steps, size=n).tolist()))
    return sampler.batch_at(index)


def vqa_eval_samples(data: StudyData, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    samples = data.eval.text(("vqa",))
    idx = rng.choice(len(samples), size=min(n, len(samples)), replace=False)
    return [samples[i] for i in sorted(idx)]


def prior_only_vqa_accuracy(data: StudyData, samples) -> float:
    """Accuracy of answering each question with its most common training answer (no image)."""
    by_question = defaultdict(Counter)
    for s in data.train.text(("vqa",)):
        by_question[s.prompt][s.answer] += 1
    answers = [by_question[s.prompt].most_common(1)[0][0] if by_question[s.prompt] else "" for s in samples]
    return ev.answer_accuracy(answers, [s.answer for s in samples])


def train_recipe(data: StudyData, pretrained: KIVLA, recipe: str, seed: int, size: StudySize,
                 eval_batch, log: Callable[[str], None] = print) -> tuple[KIVLA, dict]:
    model = copy.deepcopy(pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        model.action_expert = ActionExpert(data.config)
    actions = ReachActionSampler(data.train, data.config, model.text_tokenizer, data.fast, data.norm_stats,
                                 first_step_fraction=size.first_step_fraction)
    text = TextSampler(data.train, data.config, model.text_tokenizer, data.train.text(PRETRAIN_KINDS))
    ratio = 0.0 if recipe == "pi0" else size.vlm_ratio  # π0 is not co-trained (its CE would be ignored)
    sampler = MixedSampler(actions, text, ratio)
    curve_steps, curve_mse, curve_valid, curve_fast = [], [], [], []
    decoder = decoder_of(recipe)

    def on_step(step, m):
        if step % size.eval_every == 0 or step == size.vla_steps:
            err = ev.action_error(m, eval_batch, decoder)
            curve_steps.append(step)
            curve_mse.append(err["mse"])
            curve_valid.append(err["valid_fraction"])
            if recipe in ("ki", "joint"):  # these train both heads: also decode the backbone's FAST tokens
                curve_fast.append(ev.action_error(m, eval_batch, ev.FAST)["mse"])

    t0 = time.perf_counter()
    history = fit(model, sampler, FitConfig(recipe=recipe, steps=size.vla_steps, batch_size=size.batch_size,
                                            lr=size.vla_lr, warmup_steps=max(1, size.vla_steps // 10),
                                            seed=seed, vision_lr_scale=size.vision_lr_scale), on_step=on_step)
    seconds = time.perf_counter() - t0
    log(f"  {recipe:5s} seed {seed}: action mse {curve_mse[0]:.3f} -> {curve_mse[-1]:.3f} in {size.vla_steps} steps "
        f"({seconds:.0f} s, {np.mean([h['step_s'] for h in history]) * 1e3:.0f} ms/step)")
    return model, {"curve": {"steps": curve_steps, "mse": curve_mse, "valid_fraction": curve_valid,
                             "mse_fast_decoding": curve_fast},
                   "train_seconds": seconds, "step_ms": float(np.mean([h["step_s"] for h in history]) * 1e3),
                   "final_losses": history[-1]}


def chunk_fn_for(model: KIVLA, decoder: str) -> ev.ChunkFn:
    predictor = Predictor(model)
    return ev.fast_chunk_fn(predictor) if decoder == ev.FAST else ev.flow_chunk_fn(predictor)


def measure_latency(model: KIVLA, robot: str, reps: int) -> dict:
    """Flow expert (prefix once + 10 Euler steps) vs autoregressive FAST decoding: same model,
    same observation, batch 1, calls interleaved so both see the same machine load.

    FAST's cost grows with its token count, which on this task is tiny (a 10-step chunk of
    mostly constant joints compresses to a few tokens); "fast_<n>_tokens" forces n decoded
    tokens (no stop at EOS) to show where the paper's regime (tens of tokens) lies.
    """
    from ki_vla_ros.model.inference import prepare_inputs
    from ki_vla_ros.sim.tasks import start_reach_episode

    predictor = Predictor(model)
    cfg = load_robot_config(robot)
    sim, task = start_reach_episode(cfg, EVAL_SEED_OFFSET, max_image_side_px=96)
    frames = sim.images(0.0)
    images = [frames[c.name] for c in sorted(cfg.cameras, key=lambda c: c.slot)]
    state = sim.state_vector()
    inputs = prepare_inputs(images, state, task.instruction, config=model.config,
                            text_tokenizer=model.text_tokenizer, state_stats=predictor.state_stats)
    with torch.inference_mode():
        n_tokens = len(model.generate_text(inputs, model.config.max_target_len)[0]) + 1  # + EOS
    flow_fn, fast_fn = ev.flow_chunk_fn(predictor), ev.fast_chunk_fn(predictor)
    forced = sorted({16, model.config.max_target_len})

    def forced_fn(n):
        def run():
            with torch.inference_mode():
                model.generate_text(inputs, n, stop_at_eos=False)
        return run

    calls = {"flow": lambda: flow_fn(images, state, task.instruction),
             "fast": lambda: fast_fn(images, state, task.instruction),
             **{f"fast_{n}_tokens": forced_fn(n) for n in forced}}
    times = {name: [] for name in calls}
    for rep in range(reps + 3):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            if rep >= 3:  # warm-up
                times[name].append((time.perf_counter() - t0) * 1e3)
    out = {name: {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "reps": reps}
           for name, t in times.items()}
    out["fast_tokens"] = n_tokens
    out["fast_over_flow"] = out["fast"]["median_ms"] / out["flow"]["median_ms"]
    for n in forced:
        out[f"fast_{n}_tokens_over_flow"] = out[f"fast_{n}_tokens"]["median_ms"] / out["flow"]["median_ms"]
    return out


# ---------------------------------------------------------------------------- the study
def run_study(size_name: str = "default", robot: str = "single_arm", recipes=RECIPES,
              log: Callable[[str], None] = print, threads: int = 1) -> dict:
    """threads: torch CPU threads. 1 by default: on a shared 2-core machine a second thread
    spin-waits on the busy core and made steps ~5x slower in our runs."""
    size = SIZES[size_name]
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    log(f"[ki-claims] size {size_name}: {size.train_episodes} train / {size.eval_episodes} eval episodes, "
        f"pretrain {size.pretrain_steps} steps, VLA {size.vla_steps} steps x {len(recipes)} recipes x "
        f"{len(size.seeds)} seeds, batch {size.batch_size}")
    data = prepare_data(robot, size)
    log(f"[ki-claims] data ready ({time.perf_counter() - t_start:.0f} s); model "
        f"{count_parameters(new_model(data, 0))} parameters")
    pretrained, pre_hist = pretrain_backbone(data, size)
    vqa_samples = vqa_eval_samples(data, size.vqa_questions)
    text_eval = TextSampler(data.eval, data.config, pretrained.text_tokenizer, vqa_samples)
    random_model = new_model(data, 12345)
    reference = {
        "vqa_pretrained": ev.vqa_accuracy(pretrained, text_eval, vqa_samples),
        "vqa_random_weights": ev.vqa_accuracy(random_model, text_eval, vqa_samples),
        "vqa_prior_only": prior_only_vqa_accuracy(data, vqa_samples),
        "pretrain_ce_first_last": [pre_hist[0]["ce"], pre_hist[-1]["ce"]],
    }
    log(f"[ki-claims] pretrained backbone: VQA {reference['vqa_pretrained']:.2f} (text prior alone "
        f"{reference['vqa_prior_only']:.2f}, random weights {reference['vqa_random_weights']:.2f}) "
        f"({time.perf_counter() - t_start:.0f} s)")
    cfg_robot = load_robot_config(robot)
    cl_seeds = [EVAL_SEED_OFFSET + i for i in range(size.closed_loop_episodes)]
    reference["closed_loop_random_weights"] = ev.closed_loop_reach(
        cfg_robot, cl_seeds, chunk_fn_for(random_model, ev.FLOW))
    reference["closed_loop_random_weights"].pop("outcomes")
    eval_batch = eval_action_batch(data, pretrained, size.eval_samples)

    runs = []
    latency = None
    for seed in size.seeds:
        for recipe in recipes:
            model, run = train_recipe(data, pretrained, recipe, seed, size, eval_batch, log)
            run.update(recipe=recipe, seed=seed,
                       vqa_after=ev.vqa_accuracy(model, text_eval, vqa_samples))
            cl = ev.closed_loop_reach(cfg_robot, cl_seeds, chunk_fn_for(model, decoder_of(recipe)))
            run["closed_loop"] = {k: v for k, v in cl.items() if k != "outcomes"}
            if recipe == "ki" and latency is None:
                latency = measure_latency(model, robot, size.latency_reps)
            runs.append(run)
            log(f"        VQA {run['vqa_after']:.2f}, closed-loop success "
                f"{run['closed_loop']['success_rate']:.2f} (wrong block {run['closed_loop']['wrong_block_rate']:.2f})"
                f" [{time.perf_counter() - t_start:.0f} s]")
    results = {"size": size_name, "robot": robot, "study_size": dataclasses.asdict(size),
               "model_config": data.config.to_dict(), "reference": reference, "runs": runs,
               "latency": latency, "wall_s": time.perf_counter() - t_start}
    results["summary"] = summarize(results)
    return results


def summarize(results: dict) -> dict:
    """Per recipe: mean/std over seeds of every reported number; the claim-1 step ratio."""
    size = results["study_size"]
    by_recipe = defaultdict(list)
    for run in results["runs"]:
        by_recipe[run["recipe"]].append(run)
    out = {}
    for recipe, runs in by_recipe.items():
        reach = [ev.steps_to_reach(r["curve"]["steps"], r["curve"]["mse"], size["target_mse"]) for r in runs]
        row = {"seeds": len(runs), "steps_to_target": reach, "reached": sum(s is not None for s in reach)}
        for key, values in (("steps_to_target", reach),
                            ("final_mse", [r["curve"]["mse"][-1] for r in runs]),
                            ("vqa_after", [r["vqa_after"] for r in runs]),
                            ("success_rate", [r["closed_loop"]["success_rate"] for r in runs]),
                            ("wrong_block_rate", [r["closed_loop"]["wrong_block_rate"] for r in runs]),
                            ("step_ms", [r["step_ms"] for r in runs])):
            mean, std, n = ev.mean_std(values)
            row[key + "_mean"], row[key + "_std"] = mean, std
        out[recipe] = row
        fast_curves = [r["curve"].get("mse_fast_decoding") for r in runs]
        if all(fast_curves):  # ki / joint models decoded through their FAST head instead of the expert
            reach = [ev.steps_to_reach(r["curve"]["steps"], c, size["target_mse"]) for r, c in zip(runs, fast_curves)]
            alt = {"seeds": len(runs), "steps_to_target": reach, "reached": sum(s is not None for s in reach)}
            for key, values in (("steps_to_target", reach), ("final_mse", [c[-1] for c in fast_curves])):
                alt[key + "_mean"], alt[key + "_std"], _ = ev.mean_std(values)
            out[recipe + "/FAST-dec"] = alt
    if "ki" in out and "pi0" in out:
        ki, pi0 = out["ki"], out["pi0"]
        max_steps = size["vla_steps"]
        # Runs that never got there count as the full budget: the ratio is then a lower bound.
        ki_steps = np.mean([s if s is not None else max_steps for s in ki["steps_to_target"]])
        pi0_steps = np.mean([s if s is not None else max_steps for s in pi0["steps_to_target"]])
        out["pi0_over_ki_steps"] = {"ratio": float(pi0_steps / ki_steps),
                                    "pi0_censored": pi0["reached"] < pi0["seeds"],
                                    "ki_censored": ki["reached"] < ki["seeds"]}
    return out


def format_table(results: dict) -> str:
    s = results["summary"]
    size = results["study_size"]
    ref = results["reference"]

    def pm(row, key, fmt="{:.2f}"):
        m, sd = row[key + "_mean"], row[key + "_std"]
        return "n/a" if m != m else f"{fmt.format(m)} ± {fmt.format(sd)}"

    lines = [f"KI claims at small scale: {results['robot']}, size '{results['size']}', seeds "
             f"{size['seeds']}, {size['vla_steps']} VLA steps, batch {size['batch_size']}; mean ± std over seeds",
             f"{'recipe':14s} {'steps to mse<=' + str(size['target_mse']):>22s} {'final mse':>15s} "
             f"{'VQA after':>13s} {'reach success':>14s} {'wrong block':>13s} {'ms/step':>10s}"]
    def cell(row, key, fmt="{:.2f}"):
        return pm(row, key, fmt) if key + "_mean" in row else "-"

    for recipe in [r for r in (*RECIPES, "ki/FAST-dec", "joint/FAST-dec") if r in s]:
        row = s[recipe]
        steps = pm(row, "steps_to_target", "{:.0f}") + f" ({row['reached']}/{row['seeds']})"
        lines.append(f"{recipe:14s} {steps:>22s} {pm(row, 'final_mse', '{:.3f}'):>15s} {cell(row, 'vqa_after'):>13s} "
                     f"{cell(row, 'success_rate'):>14s} {cell(row, 'wrong_block_rate'):>13s} "
                     f"{cell(row, 'step_ms', '{:.0f}'):>10s}")
    cl = ref["closed_loop_random_weights"]
    lines.append(f"reference: VQA after pretraining {ref['vqa_pretrained']:.2f}, text prior alone "
                 f"{ref['vqa_prior_only']:.2f}, random weights {ref['vqa_random_weights']:.2f}; random-weights "
                 f"reach success {cl['success_rate']:.2f} (wrong block {cl['wrong_block_rate']:.2f})")
    if "pi0_over_ki_steps" in s:
        r = s["pi0_over_ki_steps"]
        bound = " (lower bound: some pi0 runs never reached the target)" if r["pi0_censored"] else ""
        lines.append(f"claim 1: pi0 / ki steps to target = {r['ratio']:.2f}x{bound}; paper: ~7.5x")
    lat = results.get("latency")
    if lat:
        lines.append(f"claim 4: inference latency (same KI model, batch 1, CPU): flow expert "
                     f"{lat['flow']['median_ms']:.1f} ms (p99 {lat['flow']['p99_ms']:.1f}) vs FAST autoregressive "
                     f"{lat['fast']['median_ms']:.1f} ms (p99 {lat['fast']['p99_ms']:.1f}) for "
                     f"{lat['fast_tokens']} tokens: {lat['fast_over_flow']:.2f}x")
        for key in sorted((k for k in lat if k.startswith("fast_") and k.split("_")[1].isdigit()
                           and k.endswith("_tokens")), key=lambda k: int(k.split("_")[1])):
            lines.append(f"         FAST forced to {key.split('_')[1]} tokens: {lat[key]['median_ms']:.1f} ms = "
                         f"{lat[key + '_over_flow']:.2f}x the flow expert")
    lines.append(f"wall time {results['wall_s'] / 60:.1f} min")
    return "\n".join(lines)


def write_outputs(results: dict, out_dir: Path) -> list[Path]:
    """results.json, and PNG plots when matplotlib is installed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "ki_claims.json"]
    written[0].write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    fig, ax = plt.subplots(figsize=(6, 4))
    by_recipe = defaultdict(list)
    for run in results["runs"]:
        by_recipe[run["recipe"]].append(run["curve"])
    for recipe, curves in by_recipe.items():
        steps = curves[0]["steps"]
        mse = np.array([c["mse"] for c in curves])
        ax.plot(steps, mse.mean(0), label=recipe)
        ax.fill_between(steps, mse.mean(0) - mse.std(0), mse.mean(0) + mse.std(0), alpha=0.2)
    ax.axhline(results["study_size"]["target_mse"], color="grey", ls="--", lw=1, label="target")
    ax.set(xlabel="VLA training step", ylabel="held-out action MSE (normalized)", yscale="log",
           title="claim 1: training speed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "action_error.png", dpi=120)
    plt.close(fig)
    written.append(out_dir / "action_error.png")

    s = results["summary"]
    recipes = [r for r in RECIPES if r in s]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    for ax, key, title in ((axes[0], "vqa_after", "claim 2: VQA accuracy after VLA training"),
                           (axes[1], "success_rate", "claim 3: reach success (named block)"),
                           (axes[2], "wrong_block_rate", "ended on the wrong block")):
        ax.bar(recipes, [s[r][key + "_mean"] for r in recipes], yerr=[s[r][key + "_std"] for r in recipes],
               capsize=4)
        ax.set(title=title, ylim=(0, 1))
    axes[0].axhline(results["reference"]["vqa_pretrained"], color="grey", ls="--", lw=1)
    fig.tight_layout()
    fig.savefig(out_dir / "vqa_and_success.png", dpi=120)
    plt.close(fig)
    written.append(out_dir / "vqa_and_success.png")
    return written


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")
