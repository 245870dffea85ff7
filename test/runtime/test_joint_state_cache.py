"""Joint state cache: split /joint_states streams merge by name; stale, missing and NaN joints are named."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.joint_state_cache import JointStateCache
from ki_vla_ros.runtime.observation import ObservationError

ARM = [f"panda_joint{i}" for i in range(1, 8)]
GRIPPER = ["panda_finger_joint1"]
JOINTS = tuple(load_robot_config("single_arm").joints)


def arm_and_gripper(arm_stamp_s=10.0, gripper_stamp_s=10.0) -> JointStateCache:
    cache = JointStateCache()
    cache.update(ARM, [0.1 * i for i in range(7)], arm_stamp_s, velocities=[0.0] * 7)
    cache.update(GRIPPER, [0.04], gripper_stamp_s, velocities=[0.0])
    return cache


def test_split_arm_and_gripper_joint_states_merge_in_configured_order():
    cache = arm_and_gripper(arm_stamp_s=10.00, gripper_stamp_s=9.98)
    snapshot = cache.snapshot(JOINTS, now_s=10.01, max_age_s=0.3)
    assert snapshot.joint_names == JOINTS
    np.testing.assert_allclose(snapshot.positions, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.04])
    np.testing.assert_array_equal(snapshot.velocities, np.zeros(8))
    assert snapshot.stamp_s == 9.98  # the oldest joint decides how fresh the snapshot is
    assert snapshot.age_s(10.01) == pytest.approx(0.03)


def test_configured_order_does_not_depend_on_message_order():
    cache = JointStateCache()
    cache.update(list(reversed(JOINTS)), list(range(8)), 1.0)
    snapshot = cache.snapshot(JOINTS, now_s=1.0, max_age_s=0.1)
    np.testing.assert_array_equal(snapshot.positions, list(reversed(range(8))))


def test_newest_value_per_joint_wins():
    cache = arm_and_gripper()
    cache.update(GRIPPER, [0.01], 10.2)
    snapshot = cache.snapshot(JOINTS, now_s=10.2, max_age_s=0.3)
    assert snapshot.positions[7] == 0.01
    assert snapshot.stamp_s == 10.0


def test_stale_gripper_joint_raises_naming_it_and_its_age():
    cache = arm_and_gripper(arm_stamp_s=11.0, gripper_stamp_s=10.0)  # gripper driver stopped
    with pytest.raises(ObservationError, match=r"'panda_finger_joint1' is 1\.050 s old.*max_age_s = 0\.3") as err:
        cache.snapshot(JOINTS, now_s=11.05, max_age_s=0.3)
    assert "panda_joint1" not in str(err.value)


def test_missing_joint_raises_naming_it_and_the_joints_seen():
    cache = JointStateCache()
    cache.update(ARM, [0.0] * 7, 5.0)
    with pytest.raises(ObservationError) as err:
        cache.snapshot(JOINTS, now_s=5.0, max_age_s=0.3)
    message = str(err.value)
    assert "['panda_finger_joint1']" in message
    assert "joints seen so far: ['panda_joint1'" in message


def test_nan_position_raises_naming_the_joint_even_though_an_older_value_was_fine():
    cache = arm_and_gripper()
    cache.update(["panda_joint4"], [math.nan], 10.1)
    with pytest.raises(ObservationError, match=r"joint 'panda_joint4' position is nan"):
        cache.snapshot(JOINTS, now_s=10.1, max_age_s=0.3)
    cache.update(["panda_joint4"], [-1.0], 10.2)
    assert cache.snapshot(JOINTS, now_s=10.2, max_age_s=0.3).positions[3] == -1.0


def test_infinite_position_raises_naming_the_joint():
    cache = arm_and_gripper()
    cache.update(GRIPPER, [math.inf], 10.1)
    with pytest.raises(ObservationError, match=r"'panda_finger_joint1' position is inf"):
        cache.snapshot(JOINTS, now_s=10.1, max_age_s=0.3)


def test_out_of_order_stamp_for_a_joint_is_ignored_and_counted():
    cache = arm_and_gripper(arm_stamp_s=10.0)
    updated = cache.update(ARM, [9.0] * 7, 9.5)  # a late, reordered message
    assert updated == 0
    assert cache.counters.ignored_out_of_order == 7
    assert cache.snapshot(ARM, now_s=10.0, max_age_s=0.3).positions[0] == 0.0
    # A message mixing joints: only the joints whose stamp does not go back are taken.
    cache.update(["panda_joint1", "panda_finger_joint1"], [0.5, 0.02], 10.0)
    assert cache.latest("panda_finger_joint1").position == 0.02


def test_velocities_are_optional_and_reported_only_when_every_joint_has_one():
    cache = JointStateCache()
    cache.update(ARM, [0.0] * 7, 1.0, velocities=[0.1] * 7)
    cache.update(GRIPPER, [0.0], 1.0)  # a gripper driver without velocities
    assert cache.snapshot(ARM, 1.0, 0.3).velocities is not None
    assert cache.snapshot(JOINTS, 1.0, 0.3).velocities is None


@pytest.mark.parametrize("names, positions, velocities, stamp, expected", [
    (["a", "b"], [0.0], (), 1.0, r"2 names but 1 positions"),
    (["a"], [0.0], [0.0, 1.0], 1.0, r"1 names but 2 velocities"),
    (["a", "a"], [0.0, 1.0], (), 1.0, r"\['a'\] more than once"),
    (["a"], [0.0], (), math.nan, r"stamp is nan"),
])
def test_malformed_message_raises_and_changes_nothing(names, positions, velocities, stamp, expected):
    cache = JointStateCache()
    with pytest.raises(ObservationError, match=expected):
        cache.update(names, positions, stamp, velocities)
    assert cache.joint_names == ()


def test_concurrent_publishers_merge_without_losing_joints():
    cache = JointStateCache()

    def publish(names, offset):
        for k in range(500):
            cache.update(names, [offset + k] * len(names), stamp_s=k * 0.002)

    threads = [threading.Thread(target=publish, args=(ARM, 0.0)),
               threading.Thread(target=publish, args=(GRIPPER, 1000.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snapshot = cache.snapshot(JOINTS, now_s=1.0, max_age_s=0.1)
    np.testing.assert_array_equal(snapshot.positions, [499.0] * 7 + [1499.0])
    assert cache.counters.joint_updates == 500 * 8
