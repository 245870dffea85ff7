"""Node processes stop on SIGINT at any point of their life, promptly and without a hang.

Regression: a KeyboardInterrupt raised while the main thread held a lock inside
ThreadPoolExecutor.submit (MultiThreadedExecutor hands callbacks to one) left the lock
held; the process then hung at exit and was SIGKILLed (about 1 stop in 40 under load).
node_main now never raises asynchronously once spinning. These tests stop a busy
command_mux many times at random moments, and a policy_node while it is still loading.
"""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

from ki_vla_ros.ros.graph_spec import command_line, graph_nodes

STOP_DEADLINE_S = 8.0


def stop_and_wait(process: subprocess.Popen, log_path) -> tuple[int, float]:
    process.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    try:
        process.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)  # node_main: dump every thread's stack
        time.sleep(1.0)
        process.kill()
        process.wait()
        raise AssertionError(f"no exit {STOP_DEADLINE_S} s after SIGINT; stacks:\n"
                             + log_path.read_text()[-4000:])
    return process.returncode, time.monotonic() - t0


# Publishes joint states as fast as it can: every message is one callback the mux's
# executor submits to its thread pool, which is where the old hang needed the signal to land.
FLOOD = """
import rclpy
from sensor_msgs.msg import JointState
from ki_vla_ros.runtime.config import load_robot_config
config = load_robot_config("single_arm")
rclpy.init()
node = rclpy.create_node("joint_state_flood")
pub = node.create_publisher(JointState, config.joint_states_topic, 10)
names = list(config.joint_limits)
msg = JointState(name=names, position=[0.5 * (l.lower + l.upper) for l in config.joint_limits.values()])
while rclpy.ok():
    msg.header.stamp = node.get_clock().now().to_msg()
    pub.publish(msg)
"""


def test_busy_command_mux_stops_on_sigint_at_random_moments(ros_env, tmp_path):
    spec = graph_nodes("single_arm", sim=True, checkpoint="tiny")[1]
    assert spec.name == "command_mux"
    flood = subprocess.Popen([sys.executable, "-c", FLOOD], env=ros_env)
    rng = random.Random(0)
    try:
        for i in range(12):
            log_path = tmp_path / f"command_mux_{i}.log"
            with open(log_path, "w") as log:
                mux = subprocess.Popen(command_line(spec, sys.executable), env=ros_env,
                                       stdout=log, stderr=subprocess.STDOUT)
                time.sleep(rng.uniform(1.0, 3.0))
                code, took = stop_and_wait(mux, log_path)
            assert code in (0, -signal.SIGINT), (code, log_path.read_text()[-3000:])
        assert flood.poll() is None, "the joint-state publisher died"
    finally:
        flood.send_signal(signal.SIGINT)
        flood.wait(timeout=10)


def test_policy_node_stopped_while_loading_exits_at_once(ros_env, tmp_path):
    spec = graph_nodes("single_arm", sim=True, checkpoint="tiny")[-1]
    log_path = tmp_path / "policy_node.log"
    with open(log_path, "w") as log:
        node = subprocess.Popen(command_line(spec, sys.executable), env=ros_env,
                                stdout=log, stderr=subprocess.STDOUT)
        # Wait until it is inside run_nodes (rclpy initialized, model loading), then stop.
        deadline = time.monotonic() + 60
        while "loading model" not in log_path.read_text():
            assert node.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.01)
        code, took = stop_and_wait(node, log_path)
    assert code in (0, -signal.SIGINT), (code, log_path.read_text()[-3000:])
    assert took < 3.0, f"took {took:.1f} s to stop"
