"""Observation assembly: camera images and joint states -> what the policy sees.

One path for live, replay and training: the ROS node (and the rosbag reader) turn
message fields into plain values, and everything from there on happens here:

    image bytes  --image_from_raw / image_from_compressed-->  RGB uint8 HxWx3
    images by camera name  --config slots-->  images in model slot order (None = no camera)
    JointState (names, positions)  --config joint order-->  state float32 [num_joints]
    Odometry twist  --base dims-->  base_velocity float32 [num_base_dims] (mobile only)

Anything that would make the robot act on a wrong picture of the world (a missing
joint, NaN, an unknown encoding, a truncated image) raises `ObservationError` naming the
input, the value and what was expected; the node reports it and commands nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import cv2
import numpy as np

from ki_vla_ros.runtime.config import RobotConfig

RAW_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8", "bgra8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}
_TO_RGB = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
}


class ObservationError(ValueError):
    """Sensor data that must not reach the policy; the message says which input and why."""


@dataclass(frozen=True)
class Observation:
    """What the policy sees at one instant.

    images: one entry per model image slot (config camera slots); None = no camera there.
        Each is RGB uint8 [H, W, 3], possibly a read-only view of the message buffer.
    state: joint positions, float32 [num_joints], in the configured joint order.
    base_velocity: float32 [num_base_dims] (vx, vy, wz subset), mobile bases only.
    """

    stamp_s: float
    images: tuple[np.ndarray | None, ...]
    state: np.ndarray
    prompt: str
    base_velocity: np.ndarray | None = None

    def model_state(self) -> np.ndarray:
        """The state vector the model is conditioned on: joints, then base velocity."""
        if self.base_velocity is None:
            return self.state
        return np.concatenate([self.state, self.base_velocity]).astype(np.float32)


# ----------------------------------------------------------------------------- images


def image_from_raw(encoding: str, height: int, width: int, step: int, data: bytes | memoryview,
                   camera: str = "image") -> np.ndarray:
    """sensor_msgs/Image fields -> RGB uint8 [height, width, 3].

    rgb8 comes back as a zero-copy, read-only view of `data` (rows padded to `step` bytes
    are sliced, not copied); other encodings are converted by OpenCV into a new array.
    """
    if encoding not in _CHANNELS:
        raise ObservationError(f"camera '{camera}' image is {width}x{height} {encoding}; "
                               f"expected one of {', '.join(RAW_ENCODINGS)}")
    if height <= 0 or width <= 0:
        raise ObservationError(f"camera '{camera}' image is {width}x{height}; expected a size > 0")
    channels = _CHANNELS[encoding]
    row_bytes = width * channels
    if step < row_bytes:
        raise ObservationError(f"camera '{camera}' {encoding} image row step is {step} bytes; "
                               f"expected at least width*{channels} = {row_bytes}")
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size != step * height:
        raise ObservationError(f"camera '{camera}' {width}x{height} {encoding} image has "
                               f"{buffer.size} bytes of data; expected step*height = "
                               f"{step}*{height} = {step * height}")
    pixels = buffer.reshape(height, step)[:, :row_bytes].reshape(height, width, channels)
    if encoding == "rgb8":
        return pixels
    if not pixels.flags.c_contiguous:
        pixels = np.ascontiguousarray(pixels)
    return cv2.cvtColor(pixels, _TO_RGB[encoding])


def image_from_compressed(format: str, data: bytes | memoryview, camera: str = "image") -> np.ndarray:
    """sensor_msgs/CompressedImage fields -> RGB uint8 [H, W, 3] (JPEG, PNG, ...)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        raise ObservationError(f"camera '{camera}' compressed image (format '{format}') is empty")
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ObservationError(f"camera '{camera}' compressed image (format '{format}', "
                               f"{buffer.size} bytes) could not be decoded; expected JPEG or PNG data")
    return image


def validate_image(image: np.ndarray, camera: str, width: int | None = None,
                   height: int | None = None) -> np.ndarray:
    """Check an image is RGB uint8 [H, W, 3] (and the configured size, when given)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ObservationError(f"camera '{camera}' image is {dtype} with shape {shape}; "
                               "expected uint8 [height, width, 3] RGB")
    h, w = image.shape[:2]
    if (width is not None and w != width) or (height is not None and h != height):
        raise ObservationError(f"camera '{camera}' image is {w}x{h}; expected the configured "
                               f"{width or w}x{height or h}")
    return image


# ----------------------------------------------------------------------------- state


def joint_state_vector(names: Sequence[str], positions: Sequence[float],
                       joints: Sequence[str]) -> np.ndarray:
    """JointState (names, positions) -> float32 positions of `joints`, in that order.

    The JointState may list more joints, in any order (joint_state_broadcaster does);
    every configured joint must be there, once, with a finite position.
    """
    if len(names) != len(positions):
        raise ObservationError(f"joint state has {len(names)} names but {len(positions)} "
                               "positions; expected one position per name")
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in index:
            raise ObservationError(f"joint state lists joint '{name}' twice; expected each once")
        index[name] = i
    state = np.empty(len(joints), dtype=np.float32)
    for k, joint in enumerate(joints):
        if joint not in index:
            raise ObservationError(f"joint '{joint}' is missing from the joint state; "
                                   f"received joints {list(names)}")
        value = float(positions[index[joint]])
        if not math.isfinite(value):
            raise ObservationError(f"joint '{joint}' position is {value}; expected a finite number")
        state[k] = value
    return state


def base_velocity_vector(twist: Mapping[str, float], dims: Sequence[str]) -> np.ndarray:
    """Odometry twist {'vx', 'vy', 'wz': float} -> float32 [len(dims)] in the group's dim order."""
    out = np.empty(len(dims), dtype=np.float32)
    for k, dim in enumerate(dims):
        if dim not in twist:
            raise ObservationError(f"base velocity has no '{dim}'; received {sorted(twist)}")
        value = float(twist[dim])
        if not math.isfinite(value):
            raise ObservationError(f"base velocity '{dim}' is {value}; expected a finite number")
        out[k] = value
    return out


# ----------------------------------------------------------------------------- assembly


class ObservationAssembler:
    """Builds Observations for one embodiment: camera slots and joint order from config."""

    def __init__(self, config: RobotConfig):
        self.config = config
        self._base_dims = config.base_group.dims if (config.base_group and config.odom_topic) else ()
        self._camera_names = [c.name for c in config.cameras]

    def assemble(self, stamp_s: float, images: Mapping[str, np.ndarray],
                 joint_names: Sequence[str], joint_positions: Sequence[float], prompt: str,
                 base_velocity: Mapping[str, float] | None = None) -> Observation:
        """images by camera name (already RGB, e.g. from image_from_raw); a configured
        camera missing from `images` is an error, an unknown one too."""
        for name in images:
            if name not in self._camera_names:
                raise ObservationError(f"image from unknown camera '{name}'; configured cameras "
                                       f"{self._camera_names}")
        slots: list[np.ndarray | None] = [None] * self.config.num_image_slots
        for camera in self.config.cameras:
            if camera.name not in images:
                raise ObservationError(f"camera '{camera.name}' has no image in this observation; "
                                       f"received {sorted(images)}")
            slots[camera.slot] = validate_image(images[camera.name], camera.name,
                                                camera.width, camera.height)
        state = joint_state_vector(joint_names, joint_positions, self.config.joints)
        velocity = None
        if self._base_dims:
            if base_velocity is None:
                raise ObservationError(f"no base velocity from '{self.config.odom_topic}'; "
                                       f"expected {list(self._base_dims)} for this mobile base")
            velocity = base_velocity_vector(base_velocity, self._base_dims)
        if not math.isfinite(stamp_s):
            raise ObservationError(f"observation stamp is {stamp_s}; expected a finite time")
        return Observation(stamp_s=float(stamp_s), images=tuple(slots), state=state,
                           prompt=prompt, base_velocity=velocity)
