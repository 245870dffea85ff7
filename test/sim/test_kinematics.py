"""The planar arm map: inverse kinematics lands the gripper where asked, inside the limits."""

from __future__ import annotations

import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim.kinematics import arm_layout


@pytest.mark.parametrize("name", ["single_arm", "bimanual", "mobile"])
def test_inverse_then_forward_returns_every_reachable_table_point(name):
    config = load_robot_config(name)
    rng = np.random.default_rng(0)
    for arm in arm_layout(config):
        checked = 0
        for xy in rng.uniform([0.0, -0.7], [0.8, 0.7], size=(400, 2)):
            if not arm.can_reach(xy):
                continue
            shoulder, elbow = arm.inverse(xy)
            assert arm.shoulder_limits_rad[0] <= shoulder <= arm.shoulder_limits_rad[1]
            assert arm.elbow_limits_rad[0] <= elbow <= arm.elbow_limits_rad[1]
            np.testing.assert_allclose(arm.forward(shoulder, elbow)[1], xy, atol=1e-9)
            checked += 1
        assert checked > 50, f"{arm.name}: too few reachable points to mean anything"


def test_arms_are_laid_out_by_their_side_and_paired_with_their_grippers():
    single = arm_layout(load_robot_config("single_arm"))
    assert [(a.name, a.shoulder_joint, a.elbow_joint, a.gripper_joint, a.mount.y) for a in single] == [
        ("arm", "panda_joint1", "panda_joint2", "panda_finger_joint1", 0.0)]
    bimanual = {a.name: a for a in arm_layout(load_robot_config("bimanual"))}
    assert bimanual["left_arm"].mount.y > 0 > bimanual["right_arm"].mount.y
    assert bimanual["left_arm"].gripper_joint == "left_gripper"
    assert bimanual["right_arm"].gripper_joint == "right_gripper"


def test_inverse_keeps_the_elbow_branch_nearest_the_current_joints():
    arm = arm_layout(load_robot_config("single_arm"))[0]
    xy = np.array([0.45, 0.1])
    up = arm.inverse(xy, near=(0.0, 1.0))
    down = arm.inverse(xy, near=(0.0, -1.0))
    assert up[1] > 0 > down[1]
    np.testing.assert_allclose(arm.forward(*up)[1], arm.forward(*down)[1], atol=1e-9)


def test_an_unreachable_target_is_pulled_onto_the_edge_of_the_reach():
    arm = arm_layout(load_robot_config("single_arm"))[0]
    r_min, r_max = arm.reach_range_m
    far = arm.forward(*arm.inverse(np.array([2.0, 0.0])))[1]
    near = arm.forward(*arm.inverse(np.array([0.05, 0.0])))[1]
    assert np.linalg.norm(far) == pytest.approx(r_max) and far[0] > 0
    assert np.linalg.norm(near) == pytest.approx(r_min)
