"""PolicyLoop keeps the current error of each source, so a bad camera stays visible in the
diagnostics while the inputs it starves go stale, and a good message clears its source."""
from __future__ import annotations

import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.observation import ObservationError
from ki_vla_ros.runtime.policy_loop import JOINT_STATES, PolicyLoop, joint_state_payload


@pytest.fixture
def loop():
    return PolicyLoop(load_robot_config("single_arm"), policy=None)


def joints(config, nan_joint=None):
    positions = [0.5 * (config.joint_limits[j].lower + config.joint_limits[j].upper) for j in config.joints]
    if nan_joint:
        positions[config.joints.index(nan_joint)] = float("nan")
    return joint_state_payload(config.joints, positions)


def test_a_bad_camera_stays_visible_while_other_inputs_go_stale(loop):
    config = loop.config
    loop.record_error("camera 'base': encoding '16UC1' is not supported", source="base")
    # The base camera never arrives, so the buffered joint states and wrist images age out.
    t = 10.0
    for k in range(20):
        t = 10.0 + 0.1 * k
        loop.add("wrist", t, np.zeros((224, 224, 3), np.uint8), now_s=t)
        loop.add(JOINT_STATES, t, joints(config), now_s=t + 1.0)  # one second late: stale
    errors = loop.counters.errors
    assert "16UC1" in errors["base"]
    assert "joint_states" in errors and "16UC1" not in loop.counters.last_error
    assert loop.counters.observation_errors == 1

    # A good base image clears the camera's error; a good joint state clears its own.
    loop.add("base", t, np.zeros((480, 640, 3), np.uint8), now_s=t)
    loop.add(JOINT_STATES, t + 0.01, joints(config), now_s=t + 0.02)
    assert "base" not in loop.counters.errors and JOINT_STATES not in loop.counters.errors


def test_an_unusable_observation_is_reported_then_cleared_by_a_good_one(loop):
    config = loop.config
    images = {"base": np.zeros((480, 640, 3), np.uint8), "wrist": np.zeros((224, 224, 3), np.uint8)}

    def offer(t, payload):
        for name, image in images.items():
            loop.add(name, t, image, now_s=t)
        return loop.add(JOINT_STATES, t, payload, now_s=t)

    offer(1.0, joints(config, nan_joint="panda_joint3"))
    with pytest.raises(ObservationError, match="panda_joint3"):
        loop.take_observation(now_s=1.01)
    assert "panda_joint3" in loop.counters.errors["observation"]

    offer(2.0, joints(config))
    assert loop.take_observation(now_s=2.01) is not None
    assert "observation" not in loop.counters.errors
    assert "panda_joint3" in loop.counters.last_error  # the last error is kept as history
