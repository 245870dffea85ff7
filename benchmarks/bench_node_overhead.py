"""Node overhead of policy_node, excluding the model forward, at realistic message rates.

    python benchmarks/bench_node_overhead.py [--seconds 20] [--json out.json]

A publisher process sends what a bimanual mobile robot sends (config `mobile`): 3 raw
rgb8 cameras at 640x480 30 Hz, joint states at 500 Hz, odometry at 50 Hz. policy_node
runs in this process with a predictor that does the real preprocessing (resize-with-pad
to 224, tokenized prompt with the discretized state: model.inference.prepare_inputs) but
no forward pass: it returns the measured state as a hold-still chunk. Reported, after
warm-up:

  callback per message      image -> numpy (zero-copy for rgb8) + approximate-time sync
  act per observation       take + assemble + check + latency compensation + blending +
                            safety filter + message building + publishing
  preprocess per observation  prepare_inputs (what the model sees)
  overhead per observation  3 camera callbacks + 1 joint-state callback + preprocess + act
  Twist publish jitter      |interval - 20 ms| of the 50 Hz base command stream, received
                            in another process

Baseline, measured in the same run: the tiny model's full predict_chunk (preprocessing +
backbone + 10 flow steps) on the same observations, so the table says what fraction of a
control cycle the node itself costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np

RATES_HZ = {"camera": 30.0, "joint_states": 500.0, "odom": 50.0}


def publisher_main(seconds: float) -> None:
    """Child process: the robot's sensor streams at their real rates."""
    import rclpy
    from nav_msgs.msg import Odometry
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    from ki_vla_ros.runtime.config import load_robot_config

    config = load_robot_config("mobile")
    rclpy.init()
    node = rclpy.create_node("bench_sensors")
    cams = {c.name: node.create_publisher(Image, c.topic, qos_profile_sensor_data) for c in config.cameras}
    joints = node.create_publisher(JointState, config.joint_states_topic, qos_profile_sensor_data)
    odom = node.create_publisher(Odometry, config.odom_topic, qos_profile_sensor_data)
    frames = {c.name: np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8).tobytes()
              for i, c in enumerate(config.cameras)}
    mid = [0.5 * (config.joint_limits[j].lower + config.joint_limits[j].upper) for j in config.joints]

    def send_images():
        stamp = node.get_clock().now().to_msg()
        for name, pub in cams.items():
            msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3, data=frames[name])
            msg.header.stamp = stamp
            pub.publish(msg)

    def send_joints():
        msg = JointState(name=list(config.joints), position=mid)
        msg.header.stamp = node.get_clock().now().to_msg()
        joints.publish(msg)

    def send_odom():
        msg = Odometry()
        msg.header.stamp = node.get_clock().now().to_msg()
        odom.publish(msg)

    node.create_timer(1 / RATES_HZ["camera"], send_images)
    node.create_timer(1 / RATES_HZ["joint_states"], send_joints)
    node.create_timer(1 / RATES_HZ["odom"], send_odom)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.01)
    node.destroy_node()
    rclpy.shutdown()


class PreprocessOnlyPredictor:
    """The real input pipeline of Predictor without the network: returns a hold-still chunk."""

    def __init__(self, predictor):
        self.inner = predictor
        for attr in ("num_cameras", "state_dim", "action_dim", "horizon", "device"):
            setattr(self, attr, getattr(predictor, attr))
        self.preprocess_ms: list[float] = []

    def predict_chunk(self, images, state, prompt, noise=None):
        from ki_vla_ros.model.inference import prepare_inputs

        t0 = time.perf_counter()
        prepare_inputs(images, state, prompt, config=self.inner.config,
                       text_tokenizer=self.inner.model.text_tokenizer, state_stats=self.inner.state_stats)
        self.preprocess_ms.append((time.perf_counter() - t0) * 1e3)
        hold = np.zeros(self.action_dim, np.float32)
        hold[: len(state)] = state[: self.action_dim]
        return np.repeat(hold[None], self.horizon, axis=0)

    def generate_subtask(self, images, task, max_new_tokens=24):
        return ""

    def warmup(self):
        pass


def pct(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured run length (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds discarded at the start")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        publisher_main(args.seconds)
        return 0

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from ki_vla_ros.ros.conversions import twist_type
    from ki_vla_ros.ros.policy_node import PolicyNode
    from ki_vla_ros.runtime.config import load_robot_config
    from ki_vla_ros.runtime.model_loading import load_predictor

    config = load_robot_config("mobile")
    domain = int(os.environ.get("ROS_DOMAIN_ID", random.randint(150, 200)))
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    os.environ.update(env)
    tiny = load_predictor(config, "tiny")
    predictor = PreprocessOnlyPredictor(tiny)

    context = Context()
    rclpy.init(context=context, domain_id=domain)
    node = PolicyNode(context=context, predictor=predictor,
                      parameter_overrides=[Parameter("config", value="mobile")])
    listener = rclpy.create_node("bench_twist_listener", context=context)
    twist_times: list[float] = []
    # The Twist stream is measured in a second process in spirit: a separate node on its own
    # executor thread, receiving over DDS.
    listener.create_subscription(twist_type(config.base_group), config.base_group.policy_topic,
                                 lambda _: twist_times.append(time.monotonic()), 10)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(node)
    listen_exec = MultiThreadedExecutor(num_threads=1, context=context)
    listen_exec.add_node(listener)
    stop = threading.Event()
    threads = [threading.Thread(target=lambda e=e: [e.spin_once(timeout_sec=0.01) for _ in iter(stop.is_set, True)],
                                daemon=True) for e in (executor, listen_exec)]
    for t in threads:
        t.start()
    child = subprocess.Popen([sys.executable, __file__, "--child", "--seconds", str(args.seconds + args.warmup + 5)],
                             env=env)
    time.sleep(args.warmup)
    for series in (node.callback_ms.values()):
        series.clear()
    node.act_overhead_ms.clear()
    predictor.preprocess_ms.clear()
    twist_times.clear()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=5)
    child.kill()
    child.wait()

    images = [v for name, series in node.callback_ms.items() if name != "joint_states" for v in series]
    joints = list(node.callback_ms.get("joint_states", []))
    act, pre = list(node.act_overhead_ms), predictor.preprocess_ms
    rng = np.random.default_rng(0)
    n = len(act)
    overhead = (np.asarray(act[:n]) + np.asarray(pre[:n])
                + rng.choice(images, (n, 3)).sum(1) + rng.choice(joints, n)) if n and images and joints else []
    intervals = np.diff(twist_times) * 1e3
    jitter = np.abs(intervals - 1e3 / config.control_rate_hz)

    # Baseline in the same run: the tiny model's full predict_chunk on a like observation.
    frames = [np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8) for i in range(3)]
    state = np.zeros(config.state_dim, np.float32)
    for _ in range(3):
        tiny.predict_chunk(frames, state, "warm up")
    model_ms = []
    for _ in range(30):
        t0 = time.perf_counter()
        tiny.predict_chunk(frames, state, config.default_instruction)
        model_ms.append((time.perf_counter() - t0) * 1e3)

    rows = [
        ("camera callback (per image)", images),
        ("joint-state callback (per message)", joints),
        ("preprocess (per observation)", pre),
        ("act: assemble..publish (per observation)", act),
        ("overhead per observation (sum)", list(overhead)),
        ("Twist publish jitter |dt - 20 ms|", list(jitter)),
        ("baseline: tiny model predict_chunk", model_ms),
    ]
    results = {"seconds": args.seconds, "observations": n, "messages": {
        "images": len(images), "joint_states": len(joints), "twists": len(twist_times)},
        "rows": {name: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for name, v in rows}}
    results["overhead_p99_over_model_p50"] = pct(overhead, 99) / pct(model_ms, 50) if n else float("nan")
    print(f"\npolicy_node overhead, config mobile: 3 x 640x480 rgb8 @ 30 Hz, joint states @ 500 Hz, "
          f"odom @ 50 Hz; {args.seconds:.0f} s after {args.warmup:.0f} s warm-up; {os.cpu_count()} CPU cores")
    print(f"{'':44s} {'n':>7s} {'p50 ms':>9s} {'p99 ms':>9s}")
    for name, values in rows:
        print(f"{name:44s} {len(values):7d} {pct(values, 50):9.3f} {pct(values, 99):9.3f}")
    print(f"overhead p99 / model p50 = {results['overhead_p99_over_model_p50']:.3f}   "
          f"(target: overhead p99 <= 5 ms)")
    print(f"received: {len(images)} images ({len(images) / args.seconds / 3:.1f} Hz per camera), "
          f"{len(joints)} joint states ({len(joints) / args.seconds:.0f} Hz), {len(twist_times)} Twists")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    node.destroy_node()
    listener.destroy_node()
    context.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
