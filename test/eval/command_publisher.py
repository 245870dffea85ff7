"""Test helper process: publishes the known commanded trajectory onto the live graph.

    python command_publisher.py CONFIG --duration S --period S --subscribers N

Waits until every command topic (and the instruction) has N matched subscriptions, then
every `period` publishes one JointTrajectory per action group on its controller_topic:
header.stamp = the next 0.1 s grid instant, points every step_duration_s for 4 s, the
positions of episode_bags.commanded_actions. Finally waits until every message is
acknowledged and prints {"topic": count} as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration as DurationMsg
from rclpy.duration import Duration
from rclpy.node import Node
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from episode_bags import COMMAND_GRID_S, commanded_actions
from ki_vla_ros.runtime.topics import INSTRUCTION_TOPIC
from ki_vla_ros.ros.dds import LATCHED_QOS
from ki_vla_ros.ros.graph import spin_until
from ki_vla_ros.runtime.config import load_robot_config

PLAN_S = 4.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--period", type=float, default=0.3)
    parser.add_argument("--subscribers", type=int, default=2)
    args = parser.parse_args()
    config = load_robot_config(args.config)
    dt = config.chunk.step_duration_s

    rclpy.init()
    node = Node("command_publisher")
    publishers = {g.controller_topic: (g, node.create_publisher(JointTrajectory, g.controller_topic, 10))
                  for g in config.action_groups}
    instruction = node.create_publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS)
    everything = [p for _, p in publishers.values()] + [instruction]
    spin_until(node, lambda: all(p.get_subscription_count() >= args.subscribers for p in everything),
               30.0, f"{args.subscribers} subscribers on every command topic")
    counts = {topic: 0 for topic in publishers}
    instruction.publish(String(data="wave the arm"))
    counts[INSTRUCTION_TOPIC] = 1

    end = time.time() + args.duration
    while time.time() < end:
        start_s = math.ceil(time.time() / COMMAND_GRID_S) * COMMAND_GRID_S
        steps = int(round(PLAN_S / dt))
        plan = commanded_actions(config, start_s + dt * np.arange(steps))
        for topic, (group, publisher) in publishers.items():
            msg = JointTrajectory()
            sec = math.floor(start_s)
            msg.header.stamp.sec, msg.header.stamp.nanosec = sec, int(round((start_s - sec) * 1e9))
            msg.joint_names = list(group.joints)
            columns = [config.joints.index(j) for j in group.joints]
            for k in range(steps):
                tfs_ns = int(round(k * dt * 1e9))
                msg.points.append(JointTrajectoryPoint(
                    positions=[float(v) for v in plan[k, columns]],
                    time_from_start=DurationMsg(sec=tfs_ns // 10**9, nanosec=tfs_ns % 10**9)))
            publisher.publish(msg)
            counts[topic] += 1
        time.sleep(args.period)
    for publisher in everything:
        publisher.wait_for_all_acked(Duration(seconds=10))
    print(json.dumps(counts), flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
