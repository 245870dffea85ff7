"""The local graph's DDS transports: camera images go through shared memory, not UDP fragments.

With Fast DDS's built-in 512 KiB shared-memory segment a 640x480 rgb8 frame (900 KiB) is
sent as ~15 UDP fragments, and under load whole frames are lost (measured in the mobile sim
graph: 14-17 of ~100 wrist-camera frames in 10 s; with this profile 97-98).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from ki_vla_ros.ros.dds import PROFILE_VARIABLE, graph_environment
from ki_vla_ros.runtime.config import load_robot_config

NS = {"f": "http://www.eprosima.com"}


def test_a_local_graph_gets_a_shared_memory_segment_that_holds_every_camera_frame():
    env = graph_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    root = ET.parse(env[PROFILE_VARIABLE]).getroot()
    shm = [t for t in root.iterfind(".//f:transport_descriptor", NS) if t.findtext("f:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1
    segment = int(shm[0].findtext("f:segment_size", namespaces=NS))
    max_message = int(shm[0].findtext("f:maxMessageSize", namespaces=NS))
    for name in ("single_arm", "bimanual", "mobile"):
        cameras = load_robot_config(name).cameras
        frame_bytes = [(c.width or 640) * (c.height or 480) * 3 for c in cameras]
        assert max(frame_bytes) < max_message, (name, frame_bytes, max_message)
        assert 4 * sum(frame_bytes) < segment, (name, frame_bytes, segment)  # a few ticks in flight
    udp = [t for t in root.iterfind(".//f:transport_descriptor", NS) if t.findtext("f:type", namespaces=NS) == "UDPv4"]
    assert [a.text for a in udp[0].iterfind(".//f:address", NS)] == ["127.0.0.1"]  # loopback only


def test_a_profile_the_user_chose_or_a_wider_discovery_range_is_left_alone():
    mine = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", PROFILE_VARIABLE: "/etc/my_profile.xml"}
    assert graph_environment(mine)[PROFILE_VARIABLE] == "/etc/my_profile.xml"
    assert PROFILE_VARIABLE not in graph_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
