"""Synthetic data of the small-scale KI study, all about the same simulated table scenes.

One seed = one scene, one instruction and one expert demonstration (sim/tasks.py), so the
closed-loop evaluation on seed s faces exactly what the expert showed on seed s. Train and
evaluation seeds never overlap (EVAL_SEED_OFFSET).

    reach demos   images [E, T, N_cam, S, S, 3] uint8, already resize_with_pad'ed to the
                  model's S (the one preprocessing path), state [E, T, Ds], actions
                  [E, T, Da] in robot units, instruction ("move to the red block", ...)
    text samples  VLM co-training data about the same scenes (frame 0 images):
                    vqa      "Question: is there a red block? Answer: " -> "yes"
                    caption  "Caption: " -> "from left to right: red block, blue block"
                    point    "Question: point to the blue block Answer: " -> "column 3 row 2"
                             (pretraining and co-training of the demo checkpoint and the
                             study, with point_questions)
                    subtask  planner prompt "Task: tidy up the table: start with the red
                             block. Subtask: " -> "move to the red block"
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import numpy as np

from ki_vla_ros.model.inference import format_subtask_prompt
from ki_vla_ros.model.preprocess import format_prompt, resize_with_pad
from ki_vla_ros.runtime.config import RobotConfig, load_robot_config
from ki_vla_ros.sim.robot import SimRobot
from ki_vla_ros.sim.tasks import INSTRUCTION_TEMPLATES, ReachTask, generate_episode, start_reach_episode
from ki_vla_ros.sim.vqa import point_samples, scene_caption, vqa_samples

EVAL_SEED_OFFSET = 100_000
# Enough for the expert's longest reach (about 1.7 s at 0.35 m/s); longer episodes only add
# "hold still" frames.
EPISODE_STEPS = 20
TEXT_KINDS = ("vqa", "caption", "subtask")
POINT_KIND = "point"  # asked only where a recipe says so (point_questions)
# High-level tasks whose first subtask names one block: the planner's co-training targets.
PLANNER_TASK_TEMPLATES = (
    "tidy up the table: start with the {target}",
    "clean up the table, beginning with the {target}",
    "put the blocks away, first the {target}",
    "sort the blocks: start with the {target}",
)
SUBTASK_TEMPLATE = "move to the {target}"


def format_question_prompt(question: str) -> str:
    """The backbone's VQA prompt; the answer follows it."""
    return f"Question: {question} Answer: "


CAPTION_PROMPT = "Caption: "


@dataclasses.dataclass(frozen=True)
class TextSample:
    episode: int  # whose frame-0 images go with the text
    prompt: str
    answer: str
    kind: str  # one of TEXT_KINDS, or POINT_KIND


@dataclasses.dataclass
class ReachData:
    robot: str
    seeds: list[int]
    images: np.ndarray  # uint8 [E, T, N_cam, S, S, 3]
    state: np.ndarray  # float32 [E, T, Ds]
    actions: np.ndarray  # float32 [E, T, Da]
    instructions: list[str]
    targets: list[str]
    scene_names: list[tuple[str, ...]]
    text_samples: list[TextSample]
    step_duration_s: float

    @property
    def num_episodes(self) -> int:
        return self.images.shape[0]

    @property
    def steps(self) -> int:
        return self.images.shape[1]

    def text(self, kinds: Sequence[str] = TEXT_KINDS) -> list[TextSample]:
        return [s for s in self.text_samples if s.kind in kinds]

    def extended(self, other: "ReachData") -> "ReachData":
        """This data's episodes followed by other's (same robot, steps and image size)."""
        if (other.robot, other.images.shape[1:], other.step_duration_s) != \
                (self.robot, self.images.shape[1:], self.step_duration_s):
            raise ValueError(f"cannot append {other.robot} episodes of images {other.images.shape[1:]} at "
                             f"{other.step_duration_s} s to {self.robot} episodes of {self.images.shape[1:]} at "
                             f"{self.step_duration_s} s; expected the same robot, steps, image size and rate")
        offset = self.num_episodes
        texts = [dataclasses.replace(t, episode=t.episode + offset) for t in other.text_samples]
        return ReachData(robot=self.robot, seeds=self.seeds + other.seeds,
                         images=np.concatenate([self.images, other.images]),
                         state=np.concatenate([self.state, other.state]),
                         actions=np.concatenate([self.actions, other.actions]),
                         instructions=self.instructions + other.instructions, targets=self.targets + other.targets,
                         scene_names=self.scene_names + other.scene_names,
                         text_samples=self.text_samples + texts, step_duration_s=self.step_duration_s)


def text_samples_for_scene(episode: int, scene, max_answer_chars: int) -> list[TextSample]:
    """Every VQA pair, the caption (when it fits) and one subtask target per block and template."""
    out = [TextSample(episode, format_question_prompt(q), a, "vqa") for q, a in vqa_samples(scene)]
    out += [TextSample(episode, format_question_prompt(q), a, POINT_KIND) for q, a in point_samples(scene)]
    caption = scene_caption(scene)
    if len(caption) <= max_answer_chars:
        out.append(TextSample(episode, CAPTION_PROMPT, caption, "caption"))
    for name in scene.names:
        for template in PLANNER_TASK_TEMPLATES:
            out.append(TextSample(episode, format_subtask_prompt(template.format(target=name)),
                                  SUBTASK_TEMPLATE.format(target=name), "subtask"))
    return out


def generate_reach_data(robot: str | RobotConfig, seeds: Sequence[int], image_size: int,
                        steps: int = EPISODE_STEPS, max_answer_chars: int = 46,
                        action_noise_rad: float = 0.0,
                        lead_in: Callable[[int, SimRobot, ReachTask], float] | None = None) -> ReachData:
    """Expert demonstrations and text samples for the given scene seeds.

    image_size: the model's square input S; camera frames are rendered with their longer
    side at 96 px (what sim/tasks.py stores) and resize_with_pad'ed to S once here.
    action_noise_rad: executed-action noise of the demonstrations (sim.tasks.generate_episode).
    lead_in(seed, robot, task) -> time_s: drives each episode before the expert records
    (generate_episode's lead_in; DAgger, dagger.py).
    """
    config = load_robot_config(robot) if isinstance(robot, str) else robot
    n_cam = config.num_image_slots
    cams_by_slot = sorted(config.cameras, key=lambda c: c.slot)
    e_count = len(seeds)
    images = np.zeros((e_count, steps, n_cam, image_size, image_size, 3), np.uint8)
    state = np.zeros((e_count, steps, config.state_dim), np.float32)
    actions = np.zeros((e_count, steps, config.action_dim), np.float32)
    instructions, targets, names, texts = [], [], [], []
    step_duration_s = config.chunk.step_duration_s
    for e, seed in enumerate(seeds):
        ep = generate_episode(config, int(seed), steps=steps, step_duration_s=step_duration_s,
                              action_noise_rad=action_noise_rad,
                              lead_in=functools.partial(lead_in, int(seed)) if lead_in else None)
        for cam in cams_by_slot:
            frames = ep["images"][cam.name]
            for t in range(steps):
                images[e, t, cam.slot] = resize_with_pad(frames[t], image_size)
        state[e], actions[e] = ep["state"], ep["actions"]
        instructions.append(ep["instruction"])
        targets.append(ep["target"])
        scene = start_reach_episode(config, int(seed), step_duration_s)[0].scene
        names.append(scene.names)
        texts += text_samples_for_scene(e, scene, max_answer_chars)
    return ReachData(robot=config.name, seeds=[int(s) for s in seeds], images=images, state=state,
                     actions=actions, instructions=instructions, targets=targets, scene_names=names,
                     text_samples=texts, step_duration_s=step_duration_s)


def tokenizer_corpus(data: ReachData) -> list[str]:
    """The text a study model reads and writes, to fit its text tokenizer on: every text
    sample (prompt and answer), and the action prompt of every demonstration (with varied
    state digits) and of every instruction wording for every block in the data."""
    lines = [s.prompt + s.answer for s in data.text_samples]
    names = sorted({name for scene in data.scene_names for name in scene})
    instructions = data.instructions + [t.format(target=n) for t in INSTRUCTION_TEMPLATES for n in names]
    state_dim = data.state.shape[-1]
    for i, instruction in enumerate(instructions):
        lines.append(format_prompt(instruction, [(37 * i + 11 * j) % 256 for j in range(state_dim)]))
    return lines


def action_chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """[E, T, D] -> [E, T, horizon, D]: the chunk starting at every step; past the end of an
    episode the last action repeats (the robot holds its final pose)."""
    e, t, d = actions.shape
    idx = np.minimum(np.arange(t)[:, None] + np.arange(horizon)[None, :], t - 1)  # [T, H]
    return actions[:, idx]
