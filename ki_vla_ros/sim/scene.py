"""The table-top scene: a table and 2-4 colored blocks, and the spatial facts about them.

Positions are in the world (table) frame: x away from the robot's start pose, y to its
left, metres. A fixed-base robot's base frame is the world frame; a mobile base starts
near the world origin facing +x. "Left" in facts and questions means +y, which is also
left in the overview camera image, so a question and the image agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

BLOCK_COLORS_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
}
BLOCK_SIZE_M = 0.05
MIN_SEPARATION_M = 0.09  # centre to centre: blocks never touch, so each is a clear target


@dataclass(frozen=True)
class Table:
    """The table top as an axis-aligned rectangle in the world frame."""

    x_range_m: tuple[float, float] = (0.20, 0.70)
    y_range_m: tuple[float, float] = (-0.40, 0.40)

    @property
    def corners_xy_m(self) -> np.ndarray:
        (x0, x1), (y0, y1) = self.x_range_m, self.y_range_m
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


@dataclass(frozen=True)
class SceneObject:
    color: str  # a key of BLOCK_COLORS_RGB
    position_xy_m: tuple[float, float]
    size_m: float = BLOCK_SIZE_M
    kind: str = "block"

    @property
    def name(self) -> str:
        """How instructions and questions call it: "red block"."""
        return f"{self.color} {self.kind}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return BLOCK_COLORS_RGB[self.color]

    @property
    def xy(self) -> np.ndarray:
        return np.asarray(self.position_xy_m, dtype=np.float64)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    table: Table = Table()

    @classmethod
    def sample(cls, rng: np.random.Generator, num_objects: int, table: Table = Table(),
               is_placeable: Callable[[np.ndarray], bool] | None = None,
               max_tries: int = 10_000) -> "Scene":
        """num_objects blocks of distinct colors, uniformly on the table, apart from each other.

        is_placeable(xy) lets the caller keep blocks where the robot can reach them.
        """
        if not 1 <= num_objects <= len(BLOCK_COLORS_RGB):
            raise ValueError(f"num_objects = {num_objects}; expected 1..{len(BLOCK_COLORS_RGB)}")
        colors = rng.permutation(list(BLOCK_COLORS_RGB))[:num_objects]
        placed: list[np.ndarray] = []
        margin = BLOCK_SIZE_M / 2
        for _ in range(max_tries):
            if len(placed) == num_objects:
                break
            xy = np.array([rng.uniform(table.x_range_m[0] + margin, table.x_range_m[1] - margin),
                           rng.uniform(table.y_range_m[0] + margin, table.y_range_m[1] - margin)])
            if any(np.linalg.norm(xy - p) < MIN_SEPARATION_M for p in placed):
                continue
            if is_placeable is not None and not is_placeable(xy):
                continue
            placed.append(xy)
        if len(placed) < num_objects:
            raise RuntimeError(f"placed {len(placed)} of {num_objects} blocks in {max_tries} "
                               f"tries; the placeable area of {table} is too small")
        objects = tuple(SceneObject(str(c), (float(p[0]), float(p[1])))
                        for c, p in zip(colors, placed))
        return cls(objects, table)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objects)

    def object(self, name: str) -> SceneObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(f"no object {name!r} in the scene; objects: {list(self.names)}")

    def has_color(self, color: str) -> bool:
        return any(o.color == color for o in self.objects)

    def objects_left_to_right(self) -> tuple[SceneObject, ...]:
        return tuple(sorted(self.objects, key=lambda o: -o.position_xy_m[1]))

    def object_left_of(self, name: str, other: str) -> bool:
        """True when `name` is further to the robot's left (+y) than `other`."""
        return self.object(name).position_xy_m[1] > self.object(other).position_xy_m[1]

    def leftmost(self, min_gap_m: float = 0.05) -> SceneObject | None:
        """The leftmost block, or None when the runner-up is within min_gap_m (ambiguous)."""
        ordered = self.objects_left_to_right()
        return _clear_extreme(ordered, min_gap_m)

    def rightmost(self, min_gap_m: float = 0.05) -> SceneObject | None:
        ordered = self.objects_left_to_right()[::-1]
        return _clear_extreme(ordered, min_gap_m)

    def nearest_to(self, xy_m: np.ndarray, min_gap_m: float = 0.05) -> SceneObject | None:
        """The block closest to xy_m, or None when the runner-up is within min_gap_m."""
        ordered = sorted(self.objects, key=lambda o: float(np.linalg.norm(o.xy - xy_m)))
        if len(ordered) >= 2 and (np.linalg.norm(ordered[1].xy - xy_m)
                                  - np.linalg.norm(ordered[0].xy - xy_m)) < min_gap_m:
            return None
        return ordered[0] if ordered else None


def _clear_extreme(ordered: tuple[SceneObject, ...], min_gap_m: float) -> SceneObject | None:
    if not ordered:
        return None
    if len(ordered) >= 2 and abs(ordered[0].position_xy_m[1] - ordered[1].position_xy_m[1]) < min_gap_m:
        return None
    return ordered[0]
