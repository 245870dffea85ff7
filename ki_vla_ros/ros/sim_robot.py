"""sim_robot: a simulated robot on the ROS graph, so the whole graph runs on any machine.

Stands in for ros2_control + cameras + base, from the same robot config as the real
robot (ki_vla_ros/sim has the simulation): it follows JointTrajectory commands on each
group's controller_topic like joint_trajectory_controller, a Twist or TwistStamped on a base group's
controller_topic, publishes /joint_states (and /odom for a mobile base) at the control
rate (reliable, see ros.dds), and renders the configured cameras (raw rgb8 or JPEG CompressedImage, as the
config says) of a table with colored blocks.

It also reports, for the demo and tests, how far the grippers are from the block named
in the current instruction: /sim_robot/status (std_msgs/String, JSON).

Sensor faults can be injected, as a real robot produces them, for fault tests and the soak
benchmark: publish one of SENSOR_FAULTS on /sim_robot/inject_fault (std_msgs/String); "none"
ends it. nan_state: the first joint's position is NaN; stale_stamps: joint states stamped
5 s in the past; stall_camera: the first camera stops publishing; bad_image: the first
camera publishes 16UC1 images (an encoding no policy accepts), or bytes that are not a JPEG.
/sim_robot/status says which fault is on and since when (`fault`, `fault_since_s`).
"""

from __future__ import annotations

import json
import math
import sys

import cv2
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import FloatingPointRange
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from ki_vla_ros.ros import conversions as conv
from ki_vla_ros.ros import parameters as params
from ki_vla_ros.ros.dds import LATCHED_QOS, sensor_publisher_qos
from ki_vla_ros.runtime.topics import INSTRUCTION_TOPIC
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim.robot import SimRobot


SENSOR_FAULTS = ("none", "nan_state", "stale_stamps", "stall_camera", "bad_image")
STALE_STAMP_OFFSET_S = 5.0
MAX_CATCH_UP_S = 1.0  # at most this much of missed controller ticks is published tick by tick


class SimRobotNode(Node):
    def __init__(self, node_name: str = "sim_robot", *, context=None, **node_kwargs):
        super().__init__(node_name, context=context, **node_kwargs)
        self.declare_parameter("config", "single_arm", params.CONFIG)
        self.declare_parameter("seed", 0, params.fixed("scene seed (block placement)"))
        self.declare_parameter("camera_rate_hz", 10.0, params.fixed(
            "camera frame rate (Hz); joint states run at the config's control_rate_hz",
            floating_point_range=[FloatingPointRange(from_value=0.1, to_value=120.0, step=0.0)]))
        self.config = load_robot_config(self.get_parameter("config").value)
        self.robot = SimRobot(self.config, seed=self.get_parameter("seed").value, start_time_s=self.now_s())
        self.target = ""
        self.commands_received = 0
        self._state_published = False

        for group in self.config.action_groups:
            if group.kind == "joint_trajectory":
                self.create_subscription(JointTrajectory, group.controller_topic,
                                         lambda msg, g=group.name: self._on_trajectory(g, msg), 10)
            else:
                self.create_subscription(conv.twist_type(group), group.controller_topic, self._on_twist, 10)
        self.create_subscription(String, INSTRUCTION_TOPIC, self._on_instruction, LATCHED_QOS)
        self.fault = "none"
        self.fault_since_s = None  # sim time of the first message the current fault affects
        self.create_subscription(String, "~/inject_fault", self._on_fault, 10)
        # deep enough for a catch-up burst of MAX_CATCH_UP_S of ticks (see _advance)
        state_qos = sensor_publisher_qos(int(self.config.control_rate_hz * MAX_CATCH_UP_S) + 10)
        self.joint_pub = self.create_publisher(JointState, self.config.joint_states_topic, state_qos)
        self.odom_pub = (self.create_publisher(Odometry, self.config.odom_topic, state_qos)
                         if self.config.odom_topic else None)
        self.camera_pubs = {
            c.name: self.create_publisher(Image if c.message_type == "raw" else CompressedImage, c.topic,
                                          sensor_publisher_qos())
            for c in self.config.cameras}
        self.status_pub = self.create_publisher(String, "~/status", 10)
        self.create_timer(1.0 / self.config.control_rate_hz, self._publish_state)
        self.create_timer(1.0 / self.get_parameter("camera_rate_hz").value, self._publish_images)
        self.create_timer(0.5, self._publish_status)
        self.get_logger().info(f"simulating '{self.config.name}' with blocks {list(self.robot.scene.names)}")

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_trajectory(self, group: str, msg: JointTrajectory) -> None:
        command = conv.joint_trajectory_from_msg(msg, group)
        start_s = command.start_time_s if command.start_time_s > 0 else self.now_s()
        try:
            self._advance(self.now_s())
            self.robot.command_trajectory(group, start_s, command.points, command.joint_names)
            self.commands_received += 1
        except ValueError as error:
            self.get_logger().error(f"trajectory for '{group}' rejected: {error}", throttle_duration_sec=2.0)

    def _on_twist(self, msg) -> None:
        """A Twist or TwistStamped, as the base group's twist_type says."""
        self.robot.command_twist(*conv.twist_values(msg), self.now_s())
        self.commands_received += 1

    def _on_instruction(self, msg: String) -> None:
        self.target = next((name for name in self.robot.scene.names if name in msg.data.lower()), "")

    def _on_fault(self, msg: String) -> None:
        if msg.data not in SENSOR_FAULTS:
            self.get_logger().error(f"inject_fault: unknown fault {msg.data!r}; expected one of {SENSOR_FAULTS}")
            return
        self.fault = msg.data
        self.fault_since_s = self.now_s()
        self.get_logger().warning(f"injected sensor fault: {self.fault}")

    def _publish_state(self) -> None:
        self._advance(self.now_s())
        if not self._state_published:
            self._publish_tick()  # the state before the first tick

    def _advance(self, now_s: float) -> None:
        """Run the controller ticks up to now_s and publish the joint states (and odometry) of
        every tick, as joint_state_broadcaster does each controller update: a timer that fires
        late sends the ticks it missed (with their own stamps) instead of skipping them. More
        than MAX_CATCH_UP_S behind (a clock jump): one step to now_s and one message."""
        dt = 1.0 / self.config.control_rate_hz
        if now_s - self.robot.time_s > MAX_CATCH_UP_S:
            self.robot.step(now_s)
            self._publish_tick()
            return
        # one tick per step: aim half a tick past the next one (epoch-sized times have ~1e-6 s ulp)
        while self.robot.time_s + dt <= now_s + 1e-9 and self.robot.step(min(now_s, self.robot.time_s + 1.5 * dt)):
            self._publish_tick()

    def _publish_tick(self) -> None:
        self._state_published = True
        stamp_s = self.robot.time_s - (STALE_STAMP_OFFSET_S if self.fault == "stale_stamps" else 0.0)
        stamp = conv.s_to_time(self.robot.time_s)
        names, positions, velocities = self.robot.joint_state()
        if self.fault == "nan_state":
            positions = [float("nan"), *positions[1:]]
        self.joint_pub.publish(conv.joint_state_msg(names, positions, velocities, conv.s_to_time(stamp_s)))
        if self.odom_pub is not None:
            x, y, yaw, vx, vy, wz = self.robot.odometry()
            odom = Odometry()
            odom.header.stamp = stamp
            odom.header.frame_id, odom.child_frame_id = "odom", "base_link"
            odom.pose.pose.position.x, odom.pose.pose.position.y = x, y
            odom.pose.pose.orientation.z, odom.pose.pose.orientation.w = _yaw_quaternion(yaw)
            odom.twist.twist.linear.x, odom.twist.twist.linear.y, odom.twist.twist.angular.z = vx, vy, wz
            self.odom_pub.publish(odom)

    def _publish_images(self) -> None:
        self._advance(self.now_s())
        images = self.robot.images()
        stamp = conv.s_to_time(self.robot.time_s)
        for index, camera in enumerate(self.config.cameras):
            rgb = images[camera.name]
            if index == 0 and self.fault == "stall_camera":
                continue
            if index == 0 and self.fault == "bad_image":
                if camera.message_type == "raw":
                    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="16UC1", step=rgb.shape[1] * 2)
                    msg.data = bytes(rgb.shape[0] * rgb.shape[1] * 2)
                else:
                    msg = CompressedImage(format="jpeg")
                    msg.data = b"not a jpeg"
                msg.header.stamp, msg.header.frame_id = stamp, camera.name
                self.camera_pubs[camera.name].publish(msg)
                continue
            if camera.message_type == "raw":
                self.camera_pubs[camera.name].publish(conv.rgb_to_image(rgb, stamp, camera.name))
            else:
                msg = CompressedImage()
                msg.header.stamp, msg.header.frame_id, msg.format = stamp, camera.name, "jpeg"
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                msg.data = jpeg.tobytes()
                self.camera_pubs[camera.name].publish(msg)

    def _publish_status(self) -> None:
        status = {"time_s": self.robot.time_s, "target": self.target,
                  "commands_received": self.commands_received,
                  "distances_m": {n: round(self.robot.distance_to(n), 4) for n in self.robot.scene.names},
                  "fault": self.fault, "fault_since_s": self.fault_since_s}
        if self.target:
            status["target_distance_m"] = status["distances_m"][self.target]
            status["reached"] = bool(self.robot.reached(self.target))
        self.status_pub.publish(String(data=json.dumps(status)))


def _yaw_quaternion(yaw: float) -> tuple[float, float]:
    return math.sin(yaw / 2.0), math.cos(yaw / 2.0)


def main(args=None) -> None:
    from ki_vla_ros.ros.node_main import run_nodes

    run_nodes(args, build=lambda argv: [SimRobotNode()])


if __name__ == "__main__":
    main(sys.argv)
