"""DDS settings shared by the graph: the QoS of the graph's topics, and the environment every
process of a local graph shares (see config/fastdds_localhost.xml).

QoS, as in ros2_control and the usual drivers:
- sensor_publisher_qos: sensors (joint states, odometry, cameras) are published reliable, so a
  reliable subscriber (robot_state_publisher, `ki-vla record`) matches and gets every message;
  the policy node and the mux subscribe best-effort (qos_profile_sensor_data), which matches a
  reliable publisher too and never stalls on a slow reader.
- LATCHED_QOS: the instruction and the task are state, not a stream: reliable, transient local
  and depth 1, so a node that starts late gets the last one. Publishers and subscribers of these
  topics must both use it (a transient-local subscription does not match a volatile publisher;
  from a shell: `ros2 topic pub --once --qos-durability transient_local ...`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ki_vla_ros.runtime.config import SOURCE_CONFIG_DIR



def sensor_publisher_qos(depth: int = 10) -> QoSProfile:
    """Reliable, volatile, keep last `depth`: a burst longer than depth that a reader has not
    yet acknowledged loses its oldest messages, so size it for the bursts a publisher sends."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)

LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)

PROFILE_NAME = "fastdds_localhost.xml"
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def localhost_profile() -> Path | None:
    """The shipped Fast DDS profile for one-machine graphs (source tree, then share directory)."""
    candidates = [SOURCE_CONFIG_DIR / PROFILE_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("ki_vla_ros")) / "config" / PROFILE_NAME)
    except Exception:  # not installed: the source tree is enough
        pass
    return next((p for p in candidates if p.is_file()), None)


def graph_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default os.environ) for the processes of a local graph: loopback discovery and,
    unless the user chose a profile, shared memory large enough for camera images."""
    env = dict(os.environ if env is None else env)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and PROFILE_VARIABLE not in env:
        profile = localhost_profile()
        if profile is not None:
            env[PROFILE_VARIABLE] = str(profile)
    return env


def local_graph_environment(domain_id: int, **extra: str) -> dict[str, str]:
    """graph_environment for a graph this process starts on `domain_id` and then watches: the
    children's environment, and this process gets the same DDS profile (before its first
    rclpy context)."""
    env = graph_environment(dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                                 **extra))
    if PROFILE_VARIABLE in env:
        os.environ.setdefault(PROFILE_VARIABLE, env[PROFILE_VARIABLE])
    return env
