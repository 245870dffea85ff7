"""Approximate-time sync: message_filters semantics plus a maximum observation age."""

from __future__ import annotations

import threading

import pytest

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.sync import ApproximateTimeSync, SyncStatus


def make_sync(queue_size=10, slop_s=0.02, max_age_s=0.5):
    return ApproximateTimeSync(["camera", "joints"], queue_size=queue_size, slop_s=slop_s,
                               max_age_s=max_age_s)


def test_a_set_within_slop_is_emitted_once_every_input_has_a_message():
    sync = make_sync()
    assert sync.add("camera", 10.000, "img0", now_s=10.01).status is SyncStatus.WAITING
    result = sync.add("joints", 10.005, "q0", now_s=10.01)
    assert result.status is SyncStatus.EMITTED
    assert result.synced.payloads == {"camera": "img0", "joints": "q0"}
    assert result.synced.stamps_s == {"camera": 10.000, "joints": 10.005}
    assert result.synced.spread_s == pytest.approx(0.005)


def test_the_best_matching_set_wins():
    """Joint states at 500 Hz arrive before a camera frame stamped between them: the
    frame pairs with the closest joint state, not the newest nor the oldest."""
    sync = make_sync(queue_size=20, slop_s=0.02)
    for k in range(10):
        assert sync.add("joints", 1.000 + 0.002 * k, f"q{k}", now_s=1.03).status is SyncStatus.WAITING
    result = sync.add("camera", 1.0071, "img", now_s=1.03)
    assert result.status is SyncStatus.EMITTED
    assert result.synced.payloads["joints"] == "q4"  # stamp 1.008, 0.9 ms away
    assert result.synced.stamps_s["joints"] == pytest.approx(1.008)


def test_nothing_is_emitted_outside_slop():
    sync = make_sync(slop_s=0.02)
    sync.add("camera", 5.00, "img", now_s=5.05)
    result = sync.add("joints", 5.03, "q", now_s=5.05)
    assert result.status is SyncStatus.NO_MATCH
    assert "within slop 0.02" in result.reason and "0.0300" in result.reason


def test_emitted_and_older_messages_are_dropped_so_none_is_used_twice():
    sync = make_sync(slop_s=0.02)
    sync.add("joints", 1.000, "q0", now_s=1.0)
    sync.add("joints", 1.010, "q1", now_s=1.0)
    assert sync.add("camera", 1.011, "img0", now_s=1.02).synced.payloads["joints"] == "q1"
    assert sync.queued() == {"camera": 0, "joints": 0}
    assert sync.counters().dropped_unmatched == 1  # q0 was older than the emitted set
    # the next camera frame needs a new joint state; q1 is gone
    assert sync.add("camera", 1.044, "img1", now_s=1.05).status is SyncStatus.WAITING


def test_an_observation_older_than_max_age_is_never_emitted():
    sync = make_sync(slop_s=0.5, max_age_s=0.3)
    assert sync.add("camera", 10.0, "old img", now_s=10.05).status is SyncStatus.WAITING
    # the joint state would match within slop, but the camera frame is now 0.4 s old
    result = sync.add("joints", 10.2, "q", now_s=10.4)
    assert result.status is SyncStatus.STALE
    assert result.synced is None
    assert "older than max_age_s" in result.reason
    assert sync.counters().dropped_stale == 1
    assert sync.counters().emitted == 0


def test_a_message_already_older_than_max_age_is_reported_stale():
    sync = make_sync(max_age_s=0.3)
    result = sync.add("camera", 3.0, "img", now_s=3.5)
    assert result.status is SyncStatus.STALE
    assert "camera" in result.reason and "0.500 s old" in result.reason
    assert sync.queued()["camera"] == 0


def test_out_of_order_stamp_on_one_input_is_rejected_with_reason():
    sync = make_sync()
    sync.add("camera", 2.00, "img1", now_s=2.0)
    result = sync.add("camera", 1.99, "img0", now_s=2.0)
    assert result.status is SyncStatus.REJECTED
    assert "input 'camera' stamp 1.990000 s is not newer than its previous stamp 2.000000 s" in result.reason
    assert sync.counters().rejected_out_of_order == 1
    assert sync.queued()["camera"] == 1


def test_a_repeated_stamp_is_rejected_too():
    sync = make_sync()
    sync.add("joints", 2.0, "q", now_s=2.0)
    assert sync.add("joints", 2.0, "q again", now_s=2.0).status is SyncStatus.REJECTED


def test_each_input_keeps_only_queue_size_messages():
    sync = make_sync(queue_size=3, slop_s=0.001)
    for k in range(5):
        sync.add("joints", 1.0 + 0.01 * k, f"q{k}", now_s=1.05)
    assert sync.queued()["joints"] == 3
    assert sync.counters().dropped_queue_full == 2
    # the joint state matching this frame (q0 at 1.00) fell out of the queue
    assert sync.add("camera", 1.0, "img", now_s=1.05).status is SyncStatus.NO_MATCH


def test_sets_come_out_in_stamp_order_when_a_late_input_catches_up():
    sync = make_sync(slop_s=0.005)
    sync.add("camera", 1.000, "img0", now_s=1.0)
    sync.add("camera", 1.033, "img1", now_s=1.04)
    first = sync.add("joints", 1.001, "q0", now_s=1.04)
    second = sync.add("joints", 1.034, "q1", now_s=1.04)
    assert first.synced.payloads == {"camera": "img0", "joints": "q0"}
    assert second.synced.payloads == {"camera": "img1", "joints": "q1"}


def test_unknown_input_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown sync input 'odom'"):
        make_sync().add("odom", 1.0, None, now_s=1.0)


def test_built_from_config_for_all_camera_and_joint_inputs():
    config = load_robot_config("single_arm")
    sync = ApproximateTimeSync.from_config(config.sync, [c.name for c in config.cameras] + ["joints"])
    assert (sync.queue_size, sync.slop_s, sync.max_age_s) == (30, 0.05, 0.3)


def test_concurrent_callbacks_lose_no_message():
    """Two executor threads feed one synchronizer; every camera frame finds its joint state."""
    sync = ApproximateTimeSync(["camera", "joints"], queue_size=1000, slop_s=0.0005, max_age_s=1e6)
    frames = 300
    results = []

    def feed(name):
        for k in range(frames):
            results.append(sync.add(name, k * 0.01, k, now_s=k * 0.01))

    threads = [threading.Thread(target=feed, args=(n,)) for n in ("camera", "joints")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emitted = [r.synced for r in results if r.status is SyncStatus.EMITTED]
    assert len(emitted) == frames
    assert all(s.payloads["camera"] == s.payloads["joints"] for s in emitted)
