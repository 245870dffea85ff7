"""Simulated demonstrations written as rosbag2 bags (rosbags, via eval/bag_io's BagWriter).

`write_demo_bag(path, config, episode)` records what a robot running the demonstration
would have recorded, at each step t (stamp start_s + t * dt, received 2 ms later):
joint states = episode state[t], camera images[t] (raw or PNG-compressed as configured),
and per action group a JointTrajectory from the current position to the target actions[t]
at +dt (what command_mux sends the controller). So `ki-vla convert` must give back the
episode: state[t], images[t] and actions[t] exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ki_vla_ros.eval.bag_io import (
    COMPRESSED_IMAGE, IMAGE, JOINT_STATE, JOINT_TRAJECTORY, STRING, BagWriter, make_compressed_image, make_image,
    make_joint_state, make_joint_trajectory, make_string)
from ki_vla_ros.runtime.topics import INSTRUCTION_TOPIC
from ki_vla_ros.runtime.config import RobotConfig

RECEIVE_DELAY_NS = 2_000_000


def write_demo_bag(path, config: RobotConfig, episode: dict, *, storage: str = "mcap", start_s: float = 100.0,
                   commands: bool = True, instruction: bool = True, drop_topics=(),
                   joint_names=None) -> Path:
    dt = config.chunk.step_duration_s
    joint_names = list(joint_names or config.joints)
    with BagWriter(path, storage) as writer:
        store = writer.typestore
        topics = {config.joint_states_topic: JOINT_STATE}
        topics.update({c.topic: IMAGE if c.message_type == "raw" else COMPRESSED_IMAGE for c in config.cameras})
        if commands:
            topics.update({g.controller_topic: JOINT_TRAJECTORY for g in config.action_groups})
        if instruction:
            topics[INSTRUCTION_TOPIC] = STRING
        for topic, msgtype in topics.items():
            if topic not in drop_topics:
                writer.add_topic(topic, msgtype)

        def write(topic, stamp_s, msg):
            if topic not in drop_topics:
                writer.write(topic, int(round(stamp_s * 1e9)) + RECEIVE_DELAY_NS, msg)

        if instruction:
            write(INSTRUCTION_TOPIC, start_s - 0.5, make_string(store, episode["instruction"]))
        for t in range(len(episode["state"])):
            stamp = start_s + t * dt
            write(config.joint_states_topic, stamp, make_joint_state(store, stamp, joint_names, episode["state"][t]))
            for camera in config.cameras:
                rgb = episode["images"][camera.name][t]
                write(camera.topic, stamp, make_image(store, stamp, rgb) if camera.message_type == "raw"
                      else make_compressed_image(store, stamp, rgb))
            if commands:
                for group in config.action_groups:
                    idx = [config.joints.index(j) for j in group.joints]
                    plan = np.stack([episode["state"][t][idx], episode["actions"][t][idx]])
                    write(group.controller_topic, stamp,
                          make_joint_trajectory(store, stamp, group.joints, plan, dt))
    return Path(path)
