"""planner_node: subtasks are decoded from the task and cameras, published with
hysteresis, and the policy node (sharing the same loaded model) uses them as its prompt."""
from __future__ import annotations

import time

import numpy as np
from ros_helpers import Collector, ObservationPublisher, params, train_tiny_planner

from ki_vla_ros.runtime.config import load_robot_config

CONFIG = load_robot_config("mobile")
TASK = "tidy up the table: start with the red block"
SUBTASK = "move to the red block"


def test_the_planner_publishes_subtasks_and_the_policy_follows_them(ros_graph):
    from std_msgs.msg import String

    from ki_vla_ros.ros.dds import LATCHED_QOS

    from ki_vla_ros.msg import ActionChunk, Subtask
    from ki_vla_ros.ros.planner_node import PlannerNode
    from ki_vla_ros.ros.policy_node import PolicyNode

    predictor = train_tiny_planner(CONFIG, TASK, SUBTASK)
    images = [np.full((48, 64, 3), 90, np.uint8)] * predictor.num_cameras
    assert predictor.generate_subtask(images, TASK) == SUBTASK, "the tiny planner did not learn its subtask"

    overrides = params(config="mobile")
    policy = ros_graph.add(PolicyNode(context=ros_graph.context, predictor=predictor, parameter_overrides=overrides))
    planner = ros_graph.add(PlannerNode(context=ros_graph.context, predictor=predictor, parameter_overrides=overrides))
    assert policy.policy.predictor is planner.predictor  # one loaded model for both
    probe = ros_graph.node("planner_probe")
    subtasks = Collector(probe, Subtask, "/ki_vla/subtask")
    chunks = Collector(probe, ActionChunk, "/ki_vla/action_chunk")
    task_pub = probe.create_publisher(String, "/ki_vla/task", LATCHED_QOS)
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


def test_the_planner_plans_on_images_older_than_the_policy_would_accept(ros_graph):
    """The subtask is a slow decision: images up to planner.max_image_age_s (1 s) old are
    planned on, although the policy only acts within sync.max_age_s (0.3 s). Regression: the
    planner used sync.max_age_s, and in the mobile graph (3 cameras at 640x480, some frames
    late) it never planned."""
    from std_msgs.msg import String

    from ki_vla_ros.ros.dds import LATCHED_QOS

    from ki_vla_ros.msg import Subtask
    from ki_vla_ros.ros.planner_node import PlannerNode

    assert CONFIG.sync.max_age_s < 0.5 < CONFIG.planner.max_image_age_s
    predictor = train_tiny_planner(CONFIG, TASK, SUBTASK)
    ros_graph.add(PlannerNode(context=ros_graph.context, predictor=predictor,
                              parameter_overrides=params(config="mobile")))
    probe = ros_graph.node("late_image_probe")
    subtasks = Collector(probe, Subtask, "/ki_vla/subtask")
    task_pub = probe.create_publisher(String, "/ki_vla/task", LATCHED_QOS)
    observations = ObservationPublisher(probe, CONFIG)
    observations.stamp_offset_s = -0.5
    ros_graph.wait_for(lambda: all(p.get_subscription_count() > 0 for p in observations.cams.values())
                       and task_pub.get_subscription_count() > 0, 20.0, "planner subscriptions")
    task_pub.publish(String(data=TASK))
    deadline = time.monotonic() + 30
    while not subtasks.messages:
        assert time.monotonic() < deadline, "the planner published no subtask from 0.5 s old images"
        observations.publish()
        time.sleep(0.1)
    assert subtasks.messages[0].subtask == SUBTASK
