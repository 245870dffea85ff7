"""The small-scale study of the KI paper's claims (Driess et al., 2025), end to end.

    1. data        reach demonstrations on train seeds; VLM scenes (one frame each) for the
                   VQA, caption, pointing and planner-subtask text; held-out eval seeds
    2. pretrain    one backbone for every run, with the ingredients that made the demo
                   checkpoint learn (docs/demo_checkpoint.md): a word-level tokenizer, the
                   vision tower trained alone on where the block colours are and then frozen,
                   pointing questions, then VQA + captions + pointing (next-token CE): the
                   stand-in for PaliGemma's web pretraining
    3. VLA         per arm and seed, from that backbone (the expert re-initialised per seed),
                   joint actions as offsets from the chunk's start state, 30 % of the action
                   samples from step 0:
                     ki          CE (FAST tokens + co-trained VLM text) + flow, stop-gradient K/V
                     joint       the same losses without the stop-gradient
                     pi0         flow only, no co-training (π0 / π0.5 flow training)
                     fast        CE only, actions decoded autoregressively (π0-FAST)
                     ki-noco     ki without co-training     } the stop-gradient alone,
                     joint-noco  joint without co-training  } without co-training's help
                   the held-out action error is measured every eval_every steps
    4. evaluate    (1) steps to the target action error; (2) held-out VQA and pointing after
                   VLA training against the pretrained backbone and the answer prior; (3)
                   closed-loop reach of the named block in SimRobot, also with the instruction
                   changed part-way; (4) flow expert vs autoregressive FAST latency at horizons
                   where FAST needs about 6, 16 and 48 tokens

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

from ki_vla_ros.model.config import TEXT_TOKENIZERS, KIVLAConfig
from ki_vla_ros.model.fast import FASTTokenizer
from ki_vla_ros.model.inference import Predictor
from ki_vla_ros.model.network import KIVLA, ActionExpert, count_parameters
from ki_vla_ros.model.text_tokenizer import SentencePieceTokenizer
from ki_vla_ros.runtime.config import RobotConfig, load_robot_config
from experiments import evaluation as ev
from experiments.batches import (MixedSampler, ReachActionSampler, TextSampler, check_first_step_fraction,
                                 fit_norm_stats, normalized_chunks)
from experiments.stages import StageConfig, check_vision_lr_scale, mean_step_seconds, train_stage
from experiments.tasks import (EVAL_SEED_OFFSET, POINT_KIND, TEXT_KINDS, ReachData, generate_reach_data,
                               tokenizer_corpus)
from experiments.vision_pretraining import frames, pretrain_vision_tower

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
# point_questions: pretraining and co-training also ask "point to the blue block" ->
# "column 3 row 2", the spatial fact the first chunk of an episode needs; POINT_REPEAT copies
# of each make them about a third of the co-training text.
POINT_REPEAT = 4
VLM_SEED_OFFSET = 10_000  # VLM-only scenes: seeds between the demonstrations' and the held-out ones
TARGET_STEPS_DEFAULT = 2000
# Claim 1's target: held-out MSE of normalized offset chunks over the moving dims. Predicting the
# mean chunk scores about 0.2 (an undecodable FAST chunk scores as that).
TARGET_MSE_DEFAULT = 0.1


@dataclasses.dataclass(frozen=True)
class Arm:
    """A VLA training arm: the recipe's losses (KIVLA.compute_loss) and whether a share of each
    batch is VLM co-training text (StudySize.vlm_ratio)."""
    recipe: str
    cotrained: bool


ARMS = {"ki": Arm("ki", True), "joint": Arm("joint", True), "pi0": Arm("pi0", False), "fast": Arm("fast", True),
        "ki-noco": Arm("ki", False), "joint-noco": Arm("joint", False)}
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
    # Scenes (one frame each, their own seeds) for the VLM text; 0: the demonstrations' scenes.
    vlm_scenes: int = 0
    # "point to the <color> block" -> "column C row R" in the mixed pretraining and co-training
    # (POINT_REPEAT copies of each), and measured after VLA training (claim 2).
    point_questions: bool = False
    # Closed loop, claim 3: the step at which the instruction changes to another block.
    switch_step: int = 10
    # Claim 4: FAST token counts to compare the flow expert against, and the action horizons
    # searched for the one whose reach chunks need about that many tokens.
    fast_token_targets: tuple[int, ...] = (6, 16, 48)
    latency_horizons: tuple[int, ...] = (5, 10, 15, 20, 30, 40, 50, 60)

    def __post_init__(self):
        check_vision_lr_scale(self.vision_lr_scale)
        for name in ("vision_pretrain_steps", "point_pretrain_steps", "where_weight", "demo_action_noise_rad"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 0 (0: off)")
        check_first_step_fraction(self.first_step_fraction)
        if self.vlm_scenes < 0 or not 0 < self.switch_step:
            raise ValueError(f"vlm_scenes={self.vlm_scenes}, switch_step={self.switch_step}: expected vlm_scenes >= 0 "
                             f"and switch_step > 0")
        if self.text_tokenizer not in TEXT_TOKENIZERS:
            raise ValueError(f"text_tokenizer={self.text_tokenizer!r}: expected one of {TEXT_TOKENIZERS}")


# What made the demo checkpoint learn at all (docs/demo_checkpoint.md), for every arm alike.
INGREDIENTS = dict(text_tokenizer="sentencepiece", where_weight=3.0, vision_lr_scale=0.0, delta_actions=True,
                   first_step_fraction=0.3, point_questions=True, vlm_ratio=0.25)
SIZES = {
    "quick": StudySize(train_episodes=100, eval_episodes=12, pretrain_steps=50, vla_steps=300, seeds=(0, 1),
                       eval_every=50, eval_samples=32, closed_loop_episodes=6, vqa_questions=48, latency_reps=5,
                       vision_pretrain_steps=200, point_pretrain_steps=300, vlm_scenes=300, target_mse=0.15,
                       latency_horizons=(5, 10, 30, 50), **INGREDIENTS),
    "default": StudySize(train_episodes=400, eval_episodes=30, pretrain_steps=300, vla_steps=TARGET_STEPS_DEFAULT,
                         seeds=(0, 1, 2), eval_every=100, eval_samples=64, closed_loop_episodes=20,
                         vqa_questions=100, latency_reps=20, vision_pretrain_steps=1000, point_pretrain_steps=2000,
                         vlm_scenes=1000, target_mse=TARGET_MSE_DEFAULT, **INGREDIENTS),
    # Longer training and more seeds: 3.5x the default's VLA steps (not run yet).
    "long": StudySize(train_episodes=1000, eval_episodes=30, pretrain_steps=500, vla_steps=5000,
                      seeds=(0, 1, 2, 3), eval_every=250, eval_samples=64, closed_loop_episodes=30,
                      vqa_questions=100, latency_reps=20, vision_pretrain_steps=1500, point_pretrain_steps=3000,
                      vlm_scenes=3000, target_mse=TARGET_MSE_DEFAULT, **INGREDIENTS),
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
    stats, fast = fit_action_tokenizer(train, config.action_horizon, config.delta_action_dims,
                                       config.fast_vocab_size)
    text_tokenizer = None
    if size.text_tokenizer == "sentencepiece":
        config = dataclasses.replace(config, text_tokenizer="sentencepiece")
        text_tokenizer = SentencePieceTokenizer.fit(tokenizer_corpus(train), TEXT_PIECES, vocab_size=config.vocab_size)
        first_fast_id = fast.to_backbone_ids([fast.vocab_size - 1], config.vocab_size)[0]
        if text_tokenizer.text_vocab > first_fast_id:
            raise ValueError(f"the fitted text tokenizer has {text_tokenizer.text_vocab} pieces; the FAST ids "
                             f"start at {first_fast_id} (vocab_size {config.vocab_size})")
    return StudyData(train, held_out, stats, fast, config, text_tokenizer)


def fit_action_tokenizer(train: ReachData, horizon: int, delta_dims, vocab_size: int) -> tuple[dict, FASTTokenizer]:
    """Norm stats of the demonstrations (actions as horizon-step chunks, delta_dims as offsets) and
    a FAST tokenizer fitted on their normalized chunks."""
    stats = fit_norm_stats(train, horizon, delta_dims)
    chunks = normalized_chunks(train, stats, horizon, delta_dims)
    return stats, FASTTokenizer.fit(chunks.reshape(-1, *chunks.shape[2:]), vocab_size=vocab_size)


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
        # Next-token CE only ("fast" on text batches): the expert gets no gradient and stays as it is.
        history = train_stage(model, sampler, StageConfig(recipe="fast", steps=steps, batch_size=size.batch_size,
                                                          lr=size.pretrain_lr, warmup_steps=max(1, steps // 10),
                                                          seed=seed, device=device,
                                                          vision_lr_scale=size.vision_lr_scale),
                              every=max(1, steps // 10))
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


def cotraining_sampler(model: KIVLA, demos: ReachData, text_data: ReachData, size: StudySize,
                       point_questions: bool = True) -> MixedSampler:
    """The VLA stage's batches: action chunks of `demos` (size.first_step_fraction of them from
    step 0) and, as size.vlm_ratio of each batch, VQA, captions, planner subtasks and (with
    point_questions) POINT_REPEAT copies of the pointing questions of text_data's scenes."""
    actions = ReachActionSampler(demos, model.config, model.text_tokenizer, model.fast_tokenizer, model.norm_stats,
                                 first_step_fraction=size.first_step_fraction)
    extra_kinds = (POINT_KIND,) if point_questions else ()
    text_samples = text_data.text(TEXT_KINDS) + text_data.text(extra_kinds) * POINT_REPEAT
    text = TextSampler(text_data, model.config, model.text_tokenizer, text_samples)
    return MixedSampler(actions, text, size.vlm_ratio)

def vlm_scene_data(robot: str, vlm_scenes: int, image_size: int) -> ReachData:
    """One frame of each of vlm_scenes scenes (seeds from VLM_SEED_OFFSET): the VLM data."""
    return generate_reach_data(load_robot_config(robot), range(VLM_SEED_OFFSET, VLM_SEED_OFFSET + vlm_scenes),
                               image_size, steps=1)


def point_eval_samples(data: StudyData, n: int, seed: int = 0):
    """Held-out pointing questions ("point to the blue block" -> "column 3 row 2")."""
    rng = np.random.default_rng(seed)
    samples = data.eval.text((POINT_KIND,))
    idx = rng.choice(len(samples), size=min(n, len(samples)), replace=False)
    return [samples[i] for i in sorted(idx)]


def prior_only_accuracy(train_samples, samples) -> float:
    """Accuracy of answering each question with its most common training answer (no image)."""
    by_question = defaultdict(Counter)
    for s in train_samples:
        by_question[s.prompt][s.answer] += 1
    answers = [by_question[s.prompt].most_common(1)[0][0] if by_question[s.prompt] else "" for s in samples]
    return ev.answer_accuracy(answers, [s.answer for s in samples])


@dataclasses.dataclass
class Probes:
    """Held-out measurements shared by every run: the action batch of claim 1, and the VQA and
    pointing questions of claim 2 (with their samplers)."""
    actions: object
    questions: dict  # kind -> (TextSampler, samples)

    def accuracies(self, model: KIVLA) -> dict[str, float]:
        return {kind: ev.vqa_accuracy(model, sampler, samples) for kind, (sampler, samples) in self.questions.items()}


def train_arm(data: StudyData, pretrained: KIVLA, arm: str, seed: int, size: StudySize, probes: Probes,
              text_data: ReachData, log: Callable[[str], None] = print) -> tuple[KIVLA, dict]:
    """One VLA run: the pretrained backbone, a new expert (seeded), the arm's recipe and co-training
    for size.vla_steps; the held-out action error every size.eval_every steps."""
    recipe, cotrained = ARMS[arm].recipe, ARMS[arm].cotrained
    model = copy.deepcopy(pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        model.action_expert = ActionExpert(data.config)
    sampler = cotraining_sampler(model, data.train, text_data,
                                 dataclasses.replace(size, vlm_ratio=size.vlm_ratio if cotrained else 0.0),
                                 size.point_questions)
    curve: dict[str, list] = {"steps": [], "mse": [], "valid_fraction": [], "mse_fast_decoding": []}
    decoder = decoder_of(recipe)

    def evaluate(step, m):
        err = ev.action_error(m, probes.actions, decoder)
        curve["steps"].append(step)
        curve["mse"].append(err["mse"])
        curve["valid_fraction"].append(err["valid_fraction"])
        if recipe in ("ki", "joint"):  # these train both heads: also decode the backbone's FAST tokens
            curve["mse_fast_decoding"].append(ev.action_error(m, probes.actions, ev.FAST)["mse"])

    evaluate(0, model.eval())
    stage = StageConfig(recipe=recipe, steps=size.vla_steps, batch_size=size.batch_size, lr=size.vla_lr,
                        warmup_steps=max(1, size.vla_steps // 10), seed=seed, vision_lr_scale=size.vision_lr_scale)
    t0 = time.perf_counter()
    history = train_stage(model, sampler, stage, evaluate, every=size.eval_every)
    seconds = time.perf_counter() - t0
    step_ms = mean_step_seconds(history) * 1e3
    log(f"  {arm:10s} seed {seed}: action mse {curve['mse'][0]:.3f} -> {curve['mse'][-1]:.3f} in {size.vla_steps} "
        f"steps ({seconds:.0f} s, {step_ms:.0f} ms/step)")
    return model, {"curve": curve, "train_seconds": seconds, "step_ms": step_ms, "final_losses": history[-1]}


def chunk_fn_for(model: KIVLA, decoder: str) -> ev.ChunkFn:
    predictor = Predictor(model)
    return ev.fast_chunk_fn(predictor) if decoder == ev.FAST else ev.flow_chunk_fn(predictor)


def language_following(model: KIVLA, decoder: str, robot: RobotConfig, seeds, switch_step: int) -> dict:
    """Claim 3 in SimRobot: each seed's own instruction, and the same scene with the instruction
    changed to another block after switch_step steps. The flow noise is seeded."""
    fn = chunk_fn_for(model, decoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        own = ev.closed_loop_reach(robot, seeds, fn)
        own.pop("outcomes")
        switched = ev.closed_loop_switch(robot, seeds, fn, switch_step=switch_step)
    return {"own": own, "switched": switched}


# ---------------------------------------------------------------------------- claim 4
def fast_tokens_by_horizon(data: StudyData, horizons) -> dict[int, float]:
    """Mean FAST tokens of the held-out reach chunks (those starting at step 0, where the arm
    moves) when the tokenizer is fitted for each action horizon as in prepare_data."""
    out = {}
    for h in horizons:
        try:
            stats, fast = fit_action_tokenizer(data.train, h, data.config.delta_action_dims,
                                               data.config.fast_vocab_size)
        except ValueError:  # the DCT coefficients outgrow the tiny alphabet at long horizons
            continue
        held_out = normalized_chunks(data.eval, stats, h, data.config.delta_action_dims)[:, 0]
        out[int(h)] = float(np.mean([len(fast.encode(c)) for c in held_out]))
    return out


def measure_inference(data: StudyData, robot: str, size: StudySize) -> dict:
    """Claim 4: for each FAST token count n in size.fast_token_targets, the horizon whose reach
    chunks need about n FAST tokens; at that horizon, a study-size model (batch 1, same
    observation) runs the flow expert (prefix once + 10 Euler steps) and greedy decoding of
    exactly n tokens (no stop at EOS), interleaved so both see the same machine load. The weights
    are random: neither call's cost depends on them when the token count is fixed."""
    from ki_vla_ros.model.inference import prepare_inputs
    from ki_vla_ros.sim.tasks import start_reach_episode

    tokens = fast_tokens_by_horizon(data, size.latency_horizons)
    cfg = load_robot_config(robot)
    sim, task = start_reach_episode(cfg, EVAL_SEED_OFFSET, max_image_side_px=96)
    frames = sim.images(0.0)
    images = [frames[c.name] for c in sorted(cfg.cameras, key=lambda c: c.slot)]
    rows = []
    for n in size.fast_token_targets:
        horizon = min(tokens, key=lambda h: abs(tokens[h] - n))
        config = dataclasses.replace(data.config, action_horizon=horizon,
                                     max_target_len=max(data.config.max_target_len, n + 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = KIVLA(config, text_tokenizer=data.text_tokenizer, fast_tokenizer=data.fast,
                          norm_stats=data.norm_stats).eval()
        predictor = Predictor(model)
        inputs = prepare_inputs(images, sim.state_vector(), task.instruction, config=config,
                                text_tokenizer=model.text_tokenizer, state_stats=predictor.state_stats)

        def flow():
            with torch.inference_mode():
                model.sample_actions(inputs)

        def fast():
            with torch.inference_mode():
                model.generate_text(inputs, n, stop_at_eos=False)

        times = ev.latency_ms({"flow": flow, "fast": fast}, reps=size.latency_reps)
        row = {"fast_tokens": n, "horizon": horizon, "reach_chunk_tokens_at_horizon": tokens[horizon],
               **{f"{name}_{stat}": t[stat] for name, t in times.items() for stat in ("median_ms", "p99_ms")}}
        row["fast_over_flow"] = row["fast_median_ms"] / row["flow_median_ms"]
        rows.append(row)
    return {"tokens_by_horizon": tokens, "rows": rows, "reps": size.latency_reps}


# ---------------------------------------------------------------------------- the study
def run_study(size_name: str = "default", robot: str = "single_arm", arms=tuple(ARMS),
              log: Callable[[str], None] = print, threads: int = 1, size: StudySize | None = None) -> dict:
    """threads: torch CPU threads. 1 by default: on a shared 2-core machine a second thread
    spin-waits on the busy core and made steps ~5x slower in our runs. size: instead of
    SIZES[size_name] (tests)."""
    size = size or SIZES[size_name]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"arms {unknown}: expected arms from {list(ARMS)}")
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    log(f"[ki-claims] size {size_name}: {size.train_episodes} train / {size.eval_episodes} eval episodes, "
        f"VLA {size.vla_steps} steps x {len(arms)} arms x {len(size.seeds)} seeds, batch {size.batch_size}")
    data = prepare_data(robot, size)
    text_data = vlm_scene_data(robot, size.vlm_scenes, data.config.image_size) if size.vlm_scenes else data.train
    log(f"[ki-claims] data ready ({time.perf_counter() - t_start:.0f} s); model "
        f"{count_parameters(new_model(data, 0))} parameters")
    kinds = PRETRAIN_KINDS + ((POINT_KIND,) if size.point_questions else ())
    pretrained, pre_hist = pretrain_backbone(data, size, kinds=kinds, text_data=text_data)
    questions = {"vqa": vqa_eval_samples(data, size.vqa_questions)}
    if size.point_questions:
        questions["point"] = point_eval_samples(data, size.vqa_questions)
    probes = Probes(actions=eval_action_batch(data, pretrained, size.eval_samples),
                    questions={k: (TextSampler(data.eval, data.config, pretrained.text_tokenizer, v), v)
                               for k, v in questions.items()})
    random_model = new_model(data, 12345)
    reference = {
        "pretrained": probes.accuracies(pretrained),
        "random_weights": probes.accuracies(random_model),
        "prior_only": {k: prior_only_accuracy(text_data.text((k,)), v) for k, v in questions.items()},
        "pretrain_ce_first_last": [pre_hist[0]["ce"], pre_hist[-1]["ce"]],
        "pretrain_seconds": time.perf_counter() - t_start,
    }
    log(f"[ki-claims] pretrained backbone: {reference['pretrained']} (answer prior {reference['prior_only']}, "
        f"random weights {reference['random_weights']}) ({time.perf_counter() - t_start:.0f} s)")
    cfg_robot = load_robot_config(robot)
    cl_seeds = [EVAL_SEED_OFFSET + i for i in range(size.closed_loop_episodes)]
    reference["closed_loop_random_weights"] = language_following(random_model, ev.FLOW, cfg_robot, cl_seeds,
                                                                 size.switch_step)
    runs = []
    for seed in size.seeds:
        for arm in arms:
            model, run = train_arm(data, pretrained, arm, seed, size, probes, text_data, log)
            run.update(arm=arm, recipe=ARMS[arm].recipe, cotrained=ARMS[arm].cotrained, seed=seed,
                       retention=probes.accuracies(model),
                       closed_loop=language_following(model, decoder_of(ARMS[arm].recipe), cfg_robot, cl_seeds,
                                                      size.switch_step))
            runs.append(run)
            own, sw = run["closed_loop"]["own"], run["closed_loop"]["switched"]
            log(f"             retention {run['retention']}, reach {own['success_rate']:.2f} (nearest "
                f"{own['nearest_is_target_rate']:.2f}, wrong {own['wrong_block_rate']:.2f}), switched "
                f"{sw['success_rate']:.2f} (stayed {sw['ended_at_first_rate']:.2f}) "
                f"[{time.perf_counter() - t_start:.0f} s]")
    inference = measure_inference(data, robot, size)
    results = {"size": size_name, "robot": robot, "arms": {a: dataclasses.asdict(ARMS[a]) for a in arms},
               "study_size": dataclasses.asdict(size), "model_config": data.config.to_dict(),
               "reference": reference, "runs": runs, "inference": inference,
               "wall_s": time.perf_counter() - t_start}
    results["summary"] = summarize(results)
    return results


SUMMARY_FIELDS = {  # summary key: how to read it from a run
    "final_mse": lambda r: r["curve"]["mse"][-1],
    "vqa_after": lambda r: r["retention"]["vqa"],
    "point_after": lambda r: r["retention"].get("point"),
    "success_rate": lambda r: r["closed_loop"]["own"]["success_rate"],
    "nearest_rate": lambda r: r["closed_loop"]["own"]["nearest_is_target_rate"],
    "wrong_block_rate": lambda r: r["closed_loop"]["own"]["wrong_block_rate"],
    "median_final_cm": lambda r: r["closed_loop"]["own"]["median_final_distance_m"] * 100,
    "switched_success_rate": lambda r: r["closed_loop"]["switched"]["success_rate"],
    "switched_nearest_rate": lambda r: r["closed_loop"]["switched"]["nearest_is_target_rate"],
    "switched_stayed_rate": lambda r: r["closed_loop"]["switched"]["ended_at_first_rate"],
    "step_ms": lambda r: r["step_ms"],
}


def summarize(results: dict) -> dict:
    """Per arm: mean/std over seeds of every reported number; the claim-1 step ratios."""
    size = results["study_size"]
    by_arm = defaultdict(list)
    for run in results["runs"]:
        by_arm[run["arm"]].append(run)
    out = {}
    for arm, runs in by_arm.items():
        reach = [ev.steps_to_reach(r["curve"]["steps"], r["curve"]["mse"], size["target_mse"]) for r in runs]
        row = {"seeds": len(runs), "steps_to_target": reach, "reached": sum(s is not None for s in reach)}
        row["steps_to_target_mean"], row["steps_to_target_std"], _ = ev.mean_std(reach)
        for key, read in SUMMARY_FIELDS.items():
            row[key + "_mean"], row[key + "_std"], _ = ev.mean_std([read(r) for r in runs])
        out[arm] = row
        fast_curves = [r["curve"].get("mse_fast_decoding") for r in runs]
        if all(fast_curves):  # ki / joint models decoded through their FAST head instead of the expert
            reach = [ev.steps_to_reach(r["curve"]["steps"], c, size["target_mse"]) for r, c in zip(runs, fast_curves)]
            alt = {"seeds": len(runs), "steps_to_target": reach, "reached": sum(s is not None for s in reach)}
            for key, values in (("steps_to_target", reach), ("final_mse", [c[-1] for c in fast_curves])):
                alt[key + "_mean"], alt[key + "_std"], _ = ev.mean_std(values)
            out[arm + "/FAST-dec"] = alt
    out["step_ratios_over_ki"] = {arm: step_ratio(out[arm], out["ki"], size["vla_steps"])
                                  for arm in out if arm != "ki" and "ki" in out and "reached" in out[arm]}
    return out


def step_ratio(row: dict, ki: dict, max_steps: int) -> dict:
    """Mean steps to the target of `row` over ki's. A run that never got there counts as the full
    budget, so the ratio is then a bound: a lower one when only row's runs fell short, an upper
    one when only ki's did."""
    def mean_steps(r):
        return float(np.mean([s if s is not None else max_steps for s in r["steps_to_target"]]))

    ki_steps = mean_steps(ki)
    return {"ratio": mean_steps(row) / ki_steps if ki_steps > 0 else float("nan"),  # nan: ki was there at step 0
            "censored": row["reached"] < row["seeds"], "ki_censored": ki["reached"] < ki["seeds"]}


def format_table(results: dict) -> str:
    s, size, ref = results["summary"], results["study_size"], results["reference"]

    def pm(row, key, fmt="{:.2f}"):
        if key + "_mean" not in row:
            return "-"
        m, sd = row[key + "_mean"], row[key + "_std"]
        return "n/a" if m != m else f"{fmt.format(m)} ± {fmt.format(sd)}"

    arms = [a for a in (*ARMS, *(f"{a}/FAST-dec" for a in ARMS)) if a in s]
    lines = [f"KI claims at small scale: {results['robot']}, size '{results['size']}', seeds {size['seeds']}, "
             f"{size['vla_steps']} VLA steps, batch {size['batch_size']}; mean ± std over seeds",
             "",
             f"claim 1, training speed (held-out action MSE, target {size['target_mse']}):",
             f"  {'arm':16s} {'steps to target':>22s} {'final mse':>15s} {'ratio to ki':>12s} {'ms/step':>10s}"]
    for arm in arms:
        row = s[arm]
        steps = pm(row, "steps_to_target", "{:.0f}") + f" ({row['reached']}/{row['seeds']})"
        ratio = s["step_ratios_over_ki"].get(arm)
        if ratio is None or (ratio["censored"] and ratio["ki_censored"]) or ratio["ratio"] != ratio["ratio"]:
            rtext = "-" if ratio is None else "n/a"
        else:
            rtext = f"{ratio['ratio']:.2f}" + (">" if ratio["censored"] else "") + ("<" if ratio["ki_censored"] else "")
        lines.append(f"  {arm:16s} {steps:>22s} {pm(row, 'final_mse', '{:.3f}'):>15s} {rtext:>12s} "
                     f"{pm(row, 'step_ms', '{:.0f}'):>10s}")
    lines += ["  (ratio x>: at least x, some runs never reached the target; x<: at most x, some ki runs did not)",
              "", "claim 2, knowledge retention (held-out exact match after VLA training):",
              f"  {'arm':16s} {'VQA':>13s} {'pointing':>13s}"]
    for arm in (a for a in ARMS if a in s):
        lines.append(f"  {arm:16s} {pm(s[arm], 'vqa_after'):>13s} {pm(s[arm], 'point_after'):>13s}")
    for name, key in (("pretrained backbone", "pretrained"), ("answer prior (no image)", "prior_only"),
                      ("random weights", "random_weights")):
        lines.append(f"  {name:24s} " + ", ".join(f"{k} {v:.2f}" for k, v in ref[key].items()))
    lines += ["", "claim 3, language following (closed loop, held-out scenes):",
              f"  {'arm':16s} {'reached named':>14s} {'ended nearest':>14s} {'wrong block':>13s} "
              f"{'median cm':>12s} {'switched: new':>14s} {'stayed on old':>14s}"]
    for arm in (a for a in ARMS if a in s):
        row = s[arm]
        lines.append(f"  {arm:16s} {pm(row, 'success_rate'):>14s} {pm(row, 'nearest_rate'):>14s} "
                     f"{pm(row, 'wrong_block_rate'):>13s} {pm(row, 'median_final_cm', '{:.1f}'):>12s} "
                     f"{pm(row, 'switched_success_rate'):>14s} {pm(row, 'switched_stayed_rate'):>14s}")
    rw = ref["closed_loop_random_weights"]
    lines.append(f"  {'random weights':16s} {rw['own']['success_rate']:>14.2f} {rw['own']['nearest_is_target_rate']:>14.2f}"
                 f" {rw['own']['wrong_block_rate']:>13.2f} {rw['own']['median_final_distance_m'] * 100:>12.1f} "
                 f"{rw['switched']['success_rate']:>14.2f} {rw['switched']['ended_at_first_rate']:>14.2f}")
    inf = results.get("inference")
    if inf:
        lines += ["", "claim 4, inference (batch 1, CPU): flow expert vs autoregressive FAST at the horizon whose "
                      "reach chunks need n tokens",
                  f"  {'n tokens':>8s} {'horizon':>8s} {'tokens there':>13s} {'flow ms p50/p99':>16s} "
                  f"{'FAST ms p50/p99':>16s} {'FAST / flow':>12s}"]
        for r in inf["rows"]:
            lines.append(f"  {r['fast_tokens']:>8d} {r['horizon']:>8d} {r['reach_chunk_tokens_at_horizon']:>13.1f} "
                         f"{r['flow_median_ms']:>7.1f} / {r['flow_p99_ms']:<6.1f} "
                         f"{r['fast_median_ms']:>7.1f} / {r['fast_p99_ms']:<6.1f} {r['fast_over_flow']:>12.2f}")
    lines.append(f"wall time {results['wall_s'] / 60:.1f} min")
    return "\n".join(lines)


def write_outputs(results: dict, out_dir: Path) -> list[Path]:
    """ki_claims.json, and PNG plots when matplotlib is installed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "ki_claims.json"]
    written[0].write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_arm = defaultdict(list)
    for run in results["runs"]:
        by_arm[run["arm"]].append(run["curve"])
    for arm, curves in by_arm.items():
        steps = curves[0]["steps"]
        mse = np.array([c["mse"] for c in curves])
        ax.plot(steps, mse.mean(0), label=arm)
        ax.fill_between(steps, mse.mean(0) - mse.std(0), mse.mean(0) + mse.std(0), alpha=0.15)
    ax.axhline(results["study_size"]["target_mse"], color="grey", ls="--", lw=1, label="target")
    ax.set(xlabel="VLA training step", ylabel="held-out action MSE (normalized)", yscale="log",
           title="claim 1: training speed (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "action_error.png", dpi=120)
    plt.close(fig)
    written.append(out_dir / "action_error.png")

    s = results["summary"]
    arms = [a for a in ARMS if a in s]
    panels = (("vqa_after", "claim 2: VQA after VLA training"), ("point_after", "claim 2: pointing after"),
              ("success_rate", "claim 3: reached the named block"),
              ("switched_success_rate", "claim 3: reached the new block\nafter the switch"))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 3.8))
    for ax, (key, title) in zip(axes, panels):
        ax.bar(arms, [s[a][key + "_mean"] for a in arms], yerr=[s[a][key + "_std"] for a in arms], capsize=3)
        ax.set(title=title, ylim=(0, 1))
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    ref = results["reference"]["pretrained"]
    axes[0].axhline(ref["vqa"], color="grey", ls="--", lw=1)
    if "point" in ref:
        axes[1].axhline(ref["point"], color="grey", ls="--", lw=1)
    fig.tight_layout()
    fig.savefig(out_dir / "retention_and_following.png", dpi=120)
    plt.close(fig)
    written.append(out_dir / "retention_and_following.png")
    return written


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")
