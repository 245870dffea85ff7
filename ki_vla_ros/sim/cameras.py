"""Which view each configured camera shows, and at what size.

A camera whose name contains "wrist" is a wrist view of the arm whose side word
("left"/"right") its name contains, or of the only arm; every other camera (base,
cam_high, cam_low, ...) is the overview. The size is the config's width/height when
given, else DEFAULT_IMAGE_SIZE_PX; a caller may override it (image_size_px) or scale it
down keeping the aspect ratio (max_side_px), e.g. to store small training images that
show exactly what the full-size camera shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from ki_vla_ros.runtime.config import RobotConfig

DEFAULT_IMAGE_SIZE_PX = (96, 96)  # (width, height) for cameras whose config has no size


@dataclass(frozen=True)
class SimCamera:
    name: str
    kind: Literal["overview", "wrist"]
    arm: str | None  # the arm a wrist camera rides on
    width_px: int
    height_px: int


def sim_cameras(config: RobotConfig, arm_names: Sequence[str],
                image_size_px: tuple[int, int] | None = None,
                max_side_px: int | None = None) -> tuple[SimCamera, ...]:
    cameras = []
    for camera in config.cameras:
        if image_size_px is not None:
            width, height = image_size_px
        elif camera.width is not None and camera.height is not None:
            width, height = camera.width, camera.height
        else:
            width, height = DEFAULT_IMAGE_SIZE_PX
        if max_side_px is not None and max(width, height) > max_side_px:
            scale = max_side_px / max(width, height)
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
        if "wrist" in camera.name:
            cameras.append(SimCamera(camera.name, "wrist", _wrist_arm(config, camera.name, arm_names),
                                     width, height))
        else:
            cameras.append(SimCamera(camera.name, "overview", None, width, height))
    return tuple(cameras)


def _wrist_arm(config: RobotConfig, camera: str, arm_names: Sequence[str]) -> str:
    if len(arm_names) == 1:
        return arm_names[0]
    for side in ("left", "right"):
        if side in camera:
            matches = [a for a in arm_names if side in a]
            if len(matches) == 1:
                return matches[0]
    raise ValueError(f"{config.source}: wrist camera '{camera}' matches no single arm of "
                     f"{list(arm_names)}; expected 'left' or 'right' in its name")
