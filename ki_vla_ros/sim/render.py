"""Camera images of the scene: top-down orthographic views drawn with OpenCV.

Two kinds of view, both looking straight down on the table:
  overview  fixed on the robot base, centred on the table ahead of it, OVERVIEW_SPAN_M
            across the image's longer side; the robot's forward direction is image up,
            its left is image left.
  wrist     centred on one gripper, WRIST_SPAN_M across, image up along the forearm,
            so the target slides to the image centre as the gripper reaches it.
Both draw, bottom to top, the table, the arm links (grey bars), the blocks (filled
squares in their color) and each gripper (a hollow dark ring whose size shows the
gripper opening), so a block is never hidden except under a ring's outline.

Drawing is integer-exact (no anti-aliasing; sub-pixel positions via OpenCV's `shift`),
so the same state gives the same bytes on every machine, and a block's centre pixel
has exactly the block's color.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ki_vla_ros.sim.kinematics import Pose2D
from ki_vla_ros.sim.scene import Scene

OVERVIEW_SPAN_M = 1.0
OVERVIEW_CENTER_AHEAD_M = 0.45  # table centre in front of the base
WRIST_SPAN_M = 0.30
LINK_WIDTH_M = 0.03
FLOOR_RGB = (70, 70, 75)
TABLE_RGB = (190, 160, 120)
LINK_RGB = (150, 150, 158)
GRIPPER_RGB = (20, 20, 20)
_SHIFT_BITS = 4
_SCALE = 1 << _SHIFT_BITS


@dataclass(frozen=True)
class TopDownView:
    """An orthographic downward camera: where it looks, which way is up, how much it sees."""

    center_xy_m: tuple[float, float]  # world point at the image centre
    up_yaw_rad: float  # world direction that points to the image top
    span_m: float  # metres across the longer image side
    width_px: int
    height_px: int

    @property
    def meters_per_px(self) -> float:
        return self.span_m / max(self.width_px, self.height_px)

    def world_to_pixel(self, xy_m: np.ndarray) -> np.ndarray:
        """[..., 2] world points -> [..., 2] (column, row), pixel centres at integers."""
        ahead_left = Pose2D(*self.center_xy_m, self.up_yaw_rad).to_local(xy_m)
        center_px = ((self.width_px - 1) / 2, (self.height_px - 1) / 2)
        return center_px - ahead_left[..., ::-1] / self.meters_per_px


@dataclass(frozen=True)
class ArmDrawing:
    """What the cameras see of one arm, in world coordinates."""

    mount_xy_m: np.ndarray
    elbow_xy_m: np.ndarray
    gripper_xy_m: np.ndarray
    gripper_opening: float  # 0 = closed, 1 = fully open

    @property
    def forearm_yaw_rad(self) -> float:
        d = self.gripper_xy_m - self.elbow_xy_m
        return math.atan2(d[1], d[0])


def overview_view(base_pose: Pose2D, width_px: int, height_px: int) -> TopDownView:
    center = base_pose.to_parent(np.array([OVERVIEW_CENTER_AHEAD_M, 0.0]))
    return TopDownView((float(center[0]), float(center[1])), base_pose.yaw, OVERVIEW_SPAN_M,
                       width_px, height_px)


def wrist_view(arm: ArmDrawing, width_px: int, height_px: int) -> TopDownView:
    center = arm.gripper_xy_m
    return TopDownView((float(center[0]), float(center[1])), arm.forearm_yaw_rad, WRIST_SPAN_M,
                       width_px, height_px)


def render_top_down(view: TopDownView, scene: Scene, arms: tuple[ArmDrawing, ...]) -> np.ndarray:
    """uint8 [H, W, 3] RGB image of the scene and arms seen through `view`."""
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) / 2
    # Every point of the picture goes through the view in one call: small numpy calls
    # per shape would cost more than the drawing itself.
    points = [scene.table.corners_xy_m]
    points += [obj.xy + obj.size_m * half for obj in scene.objects]
    points += [np.stack([a.mount_xy_m, a.elbow_xy_m, a.gripper_xy_m]) for a in arms]
    pixels = _fixed(view.world_to_pixel(np.concatenate(points)))
    table, pixels = pixels[:4], pixels[4:]
    blocks, links = pixels[:4 * len(scene.objects)], pixels[4 * len(scene.objects):]

    image = np.empty((view.height_px, view.width_px, 3), dtype=np.uint8)
    # cv2 fills ~40x faster than numpy broadcasting a 3-byte color over the image.
    cv2.rectangle(image, (0, 0), (view.width_px - 1, view.height_px - 1), FLOOR_RGB, cv2.FILLED)
    cv2.fillConvexPoly(image, table, TABLE_RGB, cv2.LINE_8, _SHIFT_BITS)
    px_per_m = 1.0 / view.meters_per_px
    link_px = max(1, round(LINK_WIDTH_M * px_per_m))
    for k in range(len(arms)):
        cv2.polylines(image, [links[3 * k:3 * k + 3]], False, LINK_RGB, link_px, cv2.LINE_8,
                      _SHIFT_BITS)
    # Blocks over the links (a see-through arm): the block under a gripper stays visible,
    # which is what a policy needs to see to know it has arrived.
    for k, obj in enumerate(scene.objects):
        cv2.fillConvexPoly(image, blocks[4 * k:4 * k + 4], obj.rgb, cv2.LINE_8, _SHIFT_BITS)
    ring_px = max(1, round(0.008 * px_per_m))
    for k, arm in enumerate(arms):
        radius_m = 0.015 + 0.012 * min(max(arm.gripper_opening, 0.0), 1.0)
        center = (int(links[3 * k + 2, 0]), int(links[3 * k + 2, 1]))
        cv2.circle(image, center, round(radius_m * px_per_m * _SCALE), GRIPPER_RGB, ring_px,
                   cv2.LINE_8, _SHIFT_BITS)
    return image


def _fixed(pixels: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> OpenCV fixed-point int32 (shift bits)."""
    return np.round(pixels * _SCALE).astype(np.int32)
