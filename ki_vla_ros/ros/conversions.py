"""ROS messages <-> the numpy/dataclass world of runtime/. No logic beyond field mapping."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ki_vla_ros.msg import ActionChunk as ActionChunkMsg
from ki_vla_ros.runtime.action_chunk import ActionChunk
from ki_vla_ros.runtime.commands import JointTrajectoryCommand, TrajectoryPoint, TwistCommand
from ki_vla_ros.runtime.config import ActionGroupConfig
from ki_vla_ros.runtime.observation import image_from_compressed, image_from_raw


def time_to_s(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def s_to_time(seconds: float) -> Time:
    sec = math.floor(seconds)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=int(sec), nanosec=nanosec)


def s_to_duration(seconds: float) -> Duration:
    t = s_to_time(seconds)
    return Duration(sec=t.sec, nanosec=t.nanosec)


def duration_to_s(duration: Duration) -> float:
    return duration.sec + duration.nanosec * 1e-9


def image_to_rgb(msg: Image | CompressedImage, camera: str) -> np.ndarray:
    """Camera message -> RGB uint8 [H, W, 3]; raises ObservationError naming the camera."""
    if isinstance(msg, CompressedImage):
        return image_from_compressed(msg.format, msg.data, camera)
    return image_from_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, camera)


def rgb_to_image(rgb: np.ndarray, stamp: Time, frame_id: str) -> Image:
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return msg


def joint_state_msg(names, positions, velocities, stamp: Time) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = [float(p) for p in positions]
    msg.velocity = [float(v) for v in velocities]
    return msg


def joint_trajectory_msg(command: JointTrajectoryCommand) -> JointTrajectory:
    """header.stamp = absolute time of the first point; time_from_start relative to it."""
    msg = JointTrajectory()
    msg.header.stamp = s_to_time(command.start_time_s)
    msg.joint_names = list(command.joint_names)
    for point in command.points:
        p = JointTrajectoryPoint()
        p.positions = list(point.positions)
        p.velocities = list(point.velocities)
        p.time_from_start = s_to_duration(point.time_from_start_s)
        msg.points.append(p)
    return msg


def joint_trajectory_from_msg(msg: JointTrajectory, group: str) -> JointTrajectoryCommand:
    points = tuple(
        TrajectoryPoint(duration_to_s(p.time_from_start), tuple(p.positions),
                        tuple(p.velocities) if len(p.velocities) else tuple(0.0 for _ in p.positions))
        for p in msg.points)
    return JointTrajectoryCommand(group, tuple(msg.joint_names), time_to_s(msg.header.stamp), points)


BASE_FRAME = "base_link"  # header.frame_id of a TwistStamped command (REP 105: velocities in the base frame)


def twist_type(group: ActionGroupConfig) -> type:
    """The message class of a base group's topics: TwistStamped (the default) or Twist."""
    return TwistStamped if group.stamped else Twist


def twist_msg(command: TwistCommand, stamped: bool) -> Twist | TwistStamped:
    """A base velocity; stamped: a TwistStamped with header.stamp = command.time_s."""
    msg = Twist()
    msg.linear.x, msg.linear.y, msg.angular.z = command.linear_x, command.linear_y, command.angular_z
    if not stamped:
        return msg
    out = TwistStamped(twist=msg)
    out.header.stamp, out.header.frame_id = s_to_time(command.time_s), BASE_FRAME
    return out


def twist_values(msg: Twist | TwistStamped) -> tuple[float, float, float]:
    """(vx, vy, wz) of a Twist or TwistStamped."""
    twist = msg.twist if isinstance(msg, TwistStamped) else msg
    return twist.linear.x, twist.linear.y, twist.angular.z


def action_chunk_msg(chunk: ActionChunk, start_time_s: float | None = None) -> ActionChunkMsg:
    """start_time_s: when step 0 executes (default chunk.start_time_s)."""
    msg = ActionChunkMsg()
    msg.header.stamp = s_to_time(chunk.stamp_s)
    msg.start_time = s_to_time(chunk.start_time_s if start_time_s is None else start_time_s)
    msg.step_duration = s_to_duration(chunk.step_duration_s)
    msg.action_names = list(chunk.action_names)
    msg.horizon, msg.dim = int(chunk.actions.shape[0]), int(chunk.actions.shape[1])
    msg.actions = np.ascontiguousarray(chunk.actions, dtype=np.float32).ravel().tolist()
    msg.inference_latency = s_to_duration(chunk.inference_latency_s)
    msg.instruction = chunk.instruction
    return msg


def action_chunk_from_msg(msg: ActionChunkMsg) -> ActionChunk:
    actions = np.asarray(msg.actions, dtype=np.float32)
    if actions.size != msg.horizon * msg.dim:
        raise ValueError(f"ActionChunk has {actions.size} values; expected horizon*dim = "
                         f"{msg.horizon}*{msg.dim}")
    return ActionChunk(
        stamp_s=time_to_s(msg.header.stamp), start_time_s=time_to_s(msg.start_time),
        step_duration_s=duration_to_s(msg.step_duration), action_names=tuple(msg.action_names),
        actions=actions.reshape(msg.horizon, msg.dim),
        inference_latency_s=duration_to_s(msg.inference_latency), instruction=msg.instruction)


def key_values(values: Mapping[str, str | int | float | bool]) -> list[KeyValue]:
    """Diagnostic values as plain strings, as a monitor or `ros2 topic echo` reader expects them:
    strings as they are, ints in decimal, floats as %.6g, bools as true/false. Anything else (a
    dict, a list, None, an exception) has no plain form: a TypeError naming the key."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, np.integer, str)):
            text = str(value)
        elif isinstance(value, (float, np.floating)):
            text = format(float(value), ".6g")
        else:
            raise TypeError(f"diagnostic value {key!r} is a {type(value).__name__} ({value!r}); "
                            "expected a string, int, float or bool")
        out.append(KeyValue(key=key, value=text))
    return out
