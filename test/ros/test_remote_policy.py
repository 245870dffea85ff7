"""policy_node with `model.remote`: a real `ki-vla serve` process on loopback runs the model, the
node runs over real DDS. It acts through the server, holds (no command) and says why on
/diagnostics when the server is killed, and resumes on its own when the server comes back."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml
from ros_helpers import Collector, ObservationPublisher, params

from ki_vla_ros.runtime.config import SOURCE_CONFIG_DIR, load_robot_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from server_process import ServerProcess  # noqa: E402


def remote_config(tmp_path: Path, uri: str, layout: str = "ki_vla") -> Path:
    document = yaml.safe_load((SOURCE_CONFIG_DIR / "single_arm.yaml").read_text())
    policy = document["policy_node"]["ros__parameters"]
    policy["model"].update(remote=uri, remote_timeout_s=1.0 if layout == "ki_vla" else 5.0, remote_layout=layout)
    policy["chunk"]["mode"] = "rtc" if layout == "ki_vla" else "blend"
    path = tmp_path / "single_arm_remote.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_policy_node_acts_through_the_server_holds_when_it_dies_and_resumes_when_it_returns(ros_graph, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from trajectory_msgs.msg import JointTrajectory

    from ki_vla_ros.ros.policy_node import PolicyNode

    server = ServerProcess("--checkpoint", "demo")
    try:
        path = remote_config(tmp_path, server.uri)
        config = load_robot_config(path)
        policy = ros_graph.add(PolicyNode(context=ros_graph.context, parameter_overrides=params(config=str(path))))
        assert policy.state != "unconfigured", policy.configure_error
        assert policy.policy.predictor.device == f"remote {server.uri}"
        probe = ros_graph.node("remote_probe")
        arm = Collector(probe, JointTrajectory, config.action_group("arm").policy_topic)
        diagnostics = Collector(probe, DiagnosticArray, "/diagnostics")
        observations = ObservationPublisher(probe, config)
        ros_graph.wait_for(observations.matched, 20.0, "policy_node subscriptions")

        def publish_until(condition, what, timeout_s=20.0):
            deadline = time.monotonic() + timeout_s
            while not condition():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                observations.publish()
                time.sleep(0.1)

        publish_until(lambda: len(arm) >= 3, "commands computed by the server")

        server.stop()
        killed_at = time.monotonic()

        def says_server_is_gone():
            for t, msg in zip(diagnostics.times, diagnostics.messages):
                for status in msg.status:
                    if t > killed_at and status.name.endswith(": policy") and "policy server" in status.message:
                        return True
            return False

        publish_until(says_server_is_gone, "a diagnostic naming the lost policy server")
        assert policy.state == "hold"
        time.sleep(0.3)  # the hold command itself is in flight
        held, quiet_from = len(arm), time.monotonic()
        publish_until(lambda: time.monotonic() - quiet_from > 3.0, "3 s of observations", timeout_s=10.0)
        assert len(arm) == held, "commands while the server was down"

        server = ServerProcess("--checkpoint", "demo", port=server.port)
        publish_until(lambda: len(arm) > held + 2, "commands after the server came back", timeout_s=30.0)
        assert policy.policy.predictor.reconnects >= 1
    finally:
        server.stop()


def test_policy_node_drives_a_server_that_speaks_like_openpi_in_the_libero_layout(ros_graph, tmp_path):
    """`ki-vla serve --openpi-metadata`: no sizes in the metadata, replies with actions and
    server_timing only; the node sends openpi's LIBERO dict and acts on the replies."""
    from trajectory_msgs.msg import JointTrajectory

    from ki_vla_ros.ros.policy_node import PolicyNode

    server = ServerProcess("--checkpoint", "demo", "--openpi-metadata")
    try:
        path = remote_config(tmp_path, server.uri, layout="libero")
        config = load_robot_config(path)
        policy = ros_graph.add(PolicyNode(context=ros_graph.context, parameter_overrides=params(config=str(path))))
        assert policy.state != "unconfigured", policy.configure_error
        predictor = policy.policy.predictor
        assert predictor.metadata == {} and (predictor.layout, predictor.horizon) == ("libero", 10)
        probe = ros_graph.node("openpi_probe")
        arm = Collector(probe, JointTrajectory, config.action_group("arm").policy_topic)
        observations = ObservationPublisher(probe, config)
        ros_graph.wait_for(observations.matched, 20.0, "policy_node subscriptions")
        deadline = time.monotonic() + 30.0
        while len(arm) < 3:
            assert time.monotonic() < deadline, "timed out waiting for commands computed by the server"
            observations.publish()
            time.sleep(0.1)
        assert set(predictor.last_server_timing) <= {"infer_ms", "prev_total_ms"}
        assert len(arm.messages[-1].points) > 1
    finally:
        server.stop()
