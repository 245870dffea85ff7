"""planner_node: subtasks are decoded from the task and cameras, published with
hysteresis, and the policy node (sharing the same loaded model) uses them as its prompt."""
from __future__ import annotations

import time

import numpy as np
import torch
from ros_helpers import Collector, ObservationPublisher, params

from ki_vla_ros.runtime.config import load_robot_config

CONFIG = load_robot_config("mobile")
TASK = "tidy up the table: start with the red block"
SUBTASK = "move to the red block"


def _predictor_that_plans(steps: int = 80):
    """The tiny model, briefly trained (cross-entropy through the backbone) to answer TASK
    with SUBTASK whatever the images: a real model and a real decode, just a small one."""
    from ki_vla_ros.model.inference import format_subtask_prompt, prepare_images
    from ki_vla_ros.model.network import TrainingBatch, batch_prompts
    from ki_vla_ros.runtime.model_loading import load_predictor

    predictor = load_predictor(CONFIG, "tiny")
    model, tok, c = predictor.model, predictor.model.text_tokenizer, predictor.config
    tokens, token_masks = batch_prompts(tok, [format_subtask_prompt(TASK)] * 4, c.max_token_len)
    target = torch.tensor([tok.encode(SUBTASK, add_bos=False) + [tok.eos_id]] * 4)
    ones = torch.ones_like(target, dtype=torch.bool)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        images = [[rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(c.num_cameras)] for _ in range(4)]
        pixels = torch.cat([prepare_images(i, c.num_cameras, c.image_size)[0] for i in images])
        batch = TrainingBatch(
            images=pixels, image_masks=torch.ones(4, c.num_cameras, dtype=torch.bool), tokens=tokens,
            token_masks=token_masks, target_tokens=target, target_masks=ones, target_loss_masks=ones,
            actions=torch.zeros(4, c.action_horizon, c.action_dim), has_actions=torch.zeros(4, dtype=torch.bool))
        loss = model.compute_loss(batch, recipe="ki")["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return predictor


def test_the_planner_publishes_subtasks_and_the_policy_follows_them(ros_graph):
    from std_msgs.msg import String

    from ki_vla_ros.msg import ActionChunk, Subtask
    from ki_vla_ros.ros.planner_node import PlannerNode
    from ki_vla_ros.ros.policy_node import PolicyNode

    predictor = _predictor_that_plans()
    images = [np.full((48, 64, 3), 90, np.uint8)] * predictor.num_cameras
    assert predictor.generate_subtask(images, TASK) == SUBTASK, "the tiny planner did not learn its subtask"

    overrides = params(config="mobile")
    policy = ros_graph.add(PolicyNode(context=ros_graph.context, predictor=predictor, parameter_overrides=overrides))
    planner = ros_graph.add(PlannerNode(context=ros_graph.context, predictor=predictor, parameter_overrides=overrides))
    assert policy.policy.predictor is planner.predictor  # one loaded model for both
    probe = ros_graph.node("planner_probe")
    subtasks = Collector(probe, Subtask, "/ki_vla/subtask")
    chunks = Collector(probe, ActionChunk, "/ki_vla/action_chunk")
    task_pub = probe.create_publisher(String, "/ki_vla/task", 10)
    observations = ObservationPublisher(probe, CONFIG)
    ros_graph.wait_for(lambda: observations.matched() and task_pub.get_subscription_count() > 0, 20.0,
                       "planner and policy subscriptions")
    task_pub.publish(String(data=TASK))

    deadline = time.monotonic() + 60
    while not any(c.instruction == SUBTASK for c in chunks.messages):
        assert time.monotonic() < deadline, (
            f"no chunk followed the subtask; subtasks {[m.subtask for m in subtasks.messages]}, "
            f"chunk prompts {sorted({c.instruction for c in chunks.messages})}")
        observations.publish()
        time.sleep(0.1)
    first = subtasks.messages[0]
    assert (first.task, first.subtask, first.sequence) == (TASK, SUBTASK, 1)
    assert first.generation_latency.sec + first.generation_latency.nanosec > 0
    assert all(m.sequence == 1 and m.subtask == SUBTASK for m in subtasks.messages)  # no flicker
