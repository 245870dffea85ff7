"""`ki-vla demo`: start a small graph of real nodes in separate processes and report.

Foundation stage: a chunk publisher process sends ActionChunk messages to this process
over DDS; the summary counts what arrived and the transport latency.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time


def _child_publisher(duration_s: float) -> int:
    import rclpy
    from builtin_interfaces.msg import Duration

    from ki_vla_ros.msg import ActionChunk
    from ki_vla_ros.ros.graph import wait_for_subscribers

    rclpy.init()
    node = rclpy.create_node("ki_vla_demo_chunk_publisher")
    pub = node.create_publisher(ActionChunk, "/ki_vla/action_chunk", 10)
    wait_for_subscribers(node, pub, timeout_s=30.0)
    end = time.monotonic() + duration_s
    seq = 0
    while time.monotonic() < end:
        msg = ActionChunk()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.start_time = msg.header.stamp
        msg.step_duration = Duration(nanosec=20_000_000)
        msg.action_names = ["joint_1", "joint_2"]
        msg.horizon, msg.dim = 2, 2
        msg.actions = [0.0, 0.1 * seq, 0.0, 0.1 * seq + 0.02]
        msg.instruction = "demo"
        pub.publish(msg)
        seq += 1
        time.sleep(0.1)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def run_demo(duration_s: float, summary_json: str | None, domain_id: int | None) -> int:
    import rclpy
    from rclpy.context import Context

    from ki_vla_ros.msg import ActionChunk
    from ki_vla_ros.ros.graph import spin_until

    domain_id = domain_id if domain_id is not None else random.randint(101, 200)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    print(f"[demo] ROS_DOMAIN_ID={domain_id}, discovery on localhost only")
    child = subprocess.Popen(
        [sys.executable, "-m", "ki_vla_ros.ros.demo", "--child", str(duration_s)], env=env
    )
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = rclpy.create_node("ki_vla_demo_listener", context=context)
    latencies_ms: list[float] = []

    def on_chunk(msg: ActionChunk) -> None:
        sent = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        latencies_ms.append((time.time() - sent) * 1e3)

    node.create_subscription(ActionChunk, "/ki_vla/action_chunk", on_chunk, 10)
    try:
        spin_until(node, lambda: child.poll() is not None, duration_s + 40.0, "the demo publisher to finish")
    finally:
        if child.poll() is None:
            child.kill()
        node.destroy_node()
        context.try_shutdown()
    summary = {
        "chunks_received": len(latencies_ms),
        "transport_ms_p50": statistics.median(latencies_ms) if latencies_ms else None,
        "publisher_exit_code": child.returncode,
    }
    print("[demo] summary: " + json.dumps(summary))
    if summary_json:
        with open(summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0 if child.returncode == 0 and latencies_ms else 1


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    sys.exit(_child_publisher(float(sys.argv[2])))
