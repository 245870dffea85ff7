"""Policy facade: observation -> checked ActionChunk with timings; the runtime path end to end."""

from __future__ import annotations

import numpy as np
import pytest

from ki_vla_ros.runtime.chunking import ChunkScheduler
from ki_vla_ros.runtime.commands import joint_trajectory_commands
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.observation import ObservationAssembler, image_from_raw
from ki_vla_ros.runtime.policy import Policy, PolicyError, Predictor
from ki_vla_ros.runtime.safety import SafetyFilter, measured_reference
from ki_vla_ros.runtime.sync import ApproximateTimeSync, SyncStatus


class RampPredictor:
    """A deterministic stand-in for the model: every dim moves from the state by a ramp.

    It implements the predictor protocol for real (shapes, dtypes); `override` lets a
    test return a broken output as a faulty model would.
    """

    def __init__(self, state_dim, action_dim, num_cameras=3, horizon=20, slope=0.01):
        self.state_dim, self.action_dim = state_dim, action_dim
        self.num_cameras, self.horizon, self.slope = num_cameras, horizon, slope
        self.override = None
        self.calls = []

    def predict_chunk(self, images, state, prompt, noise=None):
        self.calls.append((list(images), state.copy(), prompt))
        if self.override is not None:
            return self.override
        steps = np.arange(1, self.horizon + 1, dtype=np.float32)[:, None]
        base = np.zeros(self.action_dim, np.float32)
        base[: min(self.state_dim, self.action_dim)] = state[: self.action_dim]
        return base + self.slope * steps * np.ones(self.action_dim, np.float32)

    def generate_subtask(self, images, task, max_new_tokens=24):
        return f" reach for the {task.split()[-1]} "


@pytest.fixture
def config():
    return load_robot_config("single_arm")


def observation_for(config, stamp_s=5.0, prompt="pick up the cube", state=None):
    images = {"base": np.zeros((480, 640, 3), np.uint8), "wrist": np.zeros((224, 224, 3), np.uint8)}
    state = [0.0, 0.0, 0.0, -1.5, 0.0, 1.8, 0.0, 0.02] if state is None else state
    return ObservationAssembler(config).assemble(stamp_s, images, config.joints, state, prompt)


def test_the_test_predictor_implements_the_protocol():
    assert isinstance(RampPredictor(8, 8), Predictor)


def test_infer_returns_a_chunk_stamped_at_the_observation_and_due_one_step_later(config):
    predictor = RampPredictor(8, 8)
    observation = observation_for(config)
    result = Policy(predictor, config).infer(observation)
    # actions are position targets one step after the observation (as in training data)
    assert result.stamp_s == 5.0
    assert result.start_time_s == pytest.approx(5.0 + config.chunk.step_duration_s)
    assert result.step_duration_s == config.chunk.step_duration_s
    assert result.action_names == config.action_names
    assert result.actions.dtype == np.float32
    assert result.actions.shape == (config.chunk.horizon_steps, 8)  # 10 of the model's 20
    np.testing.assert_allclose(result.actions[0], observation.state + 0.01, atol=1e-6)
    assert result.instruction == "pick up the cube"
    timings = result.timings
    assert 0 <= timings.preprocess_ms <= timings.total_ms and 0 <= timings.inference_ms <= timings.total_ms
    assert result.inference_latency_s == pytest.approx(timings.total_ms / 1e3)


def test_unused_model_image_slots_are_passed_as_none(config):
    predictor = RampPredictor(8, 8, num_cameras=3)
    Policy(predictor, config).infer(observation_for(config))
    images, _, _ = predictor.calls[0]
    assert len(images) == 3 and images[0].shape == (480, 640, 3) and images[2] is None


@pytest.mark.parametrize("bad, message", [
    (np.zeros((20, 7), np.float32), r"shape \(20, 7\); expected \[horizon, action_dim\] = \[20, 8\]"),
    (np.full((20, 8), np.nan, np.float32), "160 non-finite action value"),
    (np.zeros((20, 8), np.int64), "int64 actions"),
])
def test_a_bad_predictor_output_raises_and_yields_no_chunk(config, bad, message):
    predictor = RampPredictor(8, 8)
    predictor.override = bad
    with pytest.raises(PolicyError, match=message):
        Policy(predictor, config).infer(observation_for(config))


def test_a_model_that_does_not_fit_the_robot_is_refused_at_startup(config):
    with pytest.raises(PolicyError, match=r"action_dim 14, robot has 8 .*horizon 8, chunk.horizon_steps is 10"):
        Policy(RampPredictor(8, 14, horizon=8), config)


def test_no_instruction_means_no_chunk(config):
    with pytest.raises(PolicyError, match="no instruction"):
        Policy(RampPredictor(8, 8), config).infer(observation_for(config, prompt="  "))


def test_subtask_text_comes_from_the_predictor_trimmed(config):
    assert Policy(RampPredictor(8, 8), config).subtask([], "pick up the cup") == "reach for the cup"


def test_synchronized_messages_become_safe_joint_trajectories(config):
    """The path the live node and the replay evaluator share, without ROS."""
    sync = ApproximateTimeSync.from_config(config.sync, ["base", "wrist", "joints"])
    base = np.zeros((480, 640, 3), np.uint8).tobytes()
    wrist = np.zeros((224, 224, 3), np.uint8)
    measured = [0.0, 0.0, 0.0, -1.5, 0.0, 1.8, 0.0, 0.02]
    sync.add("base", 10.000, ("rgb8", 480, 640, 1920, base), now_s=10.01)
    sync.add("wrist", 10.004, wrist, now_s=10.01)
    result = sync.add("joints", 10.002, (config.joints, measured), now_s=10.01)
    assert result.status is SyncStatus.EMITTED

    payload = result.synced.payloads
    images = {"base": image_from_raw(*payload["base"], camera="base"), "wrist": payload["wrist"]}
    observation = ObservationAssembler(config).assemble(
        result.synced.newest_stamp_s, images, *payload["joints"], prompt="pick up the cube")
    predictor = RampPredictor(8, 8, slope=0.5)  # far too fast: 0.5 rad per 0.1 s step
    action_chunk = Policy(predictor, config).infer(observation)

    scheduler = ChunkScheduler(config.chunk)
    plan = scheduler.plan(action_chunk, now_s=10.25)  # 250 ms after the images were taken
    # observation stamp 10.004 (the newest, as ActionChunk.msg says); step k is due at
    # 10.104 + 0.1 k, so steps 0 and 1 have passed at 10.25
    assert plan.dropped_steps == 2
    safety = SafetyFilter.from_robot_config(config)
    filtered = safety.filter(plan.trajectory.actions, reference=measured_reference(observation, config))
    assert filtered.status.value == "clipped"
    scheduler.commit(plan.trajectory.with_actions(filtered.actions), action_chunk.stamp_s)

    arm = joint_trajectory_commands(scheduler.current, config)[0]
    assert arm.start_time_s == pytest.approx(10.304)
    first = np.array(arm.points[0].positions)
    assert np.all(np.abs(first - observation.state[:7]) <= safety.max_step[:7] + 1e-9)
