"""Questions and answers about a scene: the VLM co-training data of the synthetic task.

They ask about the same scenes the robot acts in, so a backbone that keeps its VQA
skill after VLA training shows knowledge retention (the KI paper's claim). Answers are
single words. A question whose answer would be ambiguous (two blocks almost equally far
left) is left out rather than answered arbitrarily. "Left" is the robot's left (+y),
which is image left in the overview camera.
"""

from __future__ import annotations

import numpy as np

from ki_vla_ros.sim.scene import BLOCK_COLORS_RGB, Scene

NUMBER_WORDS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four"}
AMBIGUITY_GAP_M = 0.05
ROBOT_XY_M = np.zeros(2)  # a fixed base, or a mobile base parked at the table


def vqa_samples(scene: Scene) -> list[tuple[str, str]]:
    """Every unambiguous (question, answer) pair about the scene, in a fixed order."""
    samples = [("how many blocks are there?", NUMBER_WORDS[len(scene.objects)])]
    samples += [(f"is there a {color} block?", _yes_no(scene.has_color(color)))
                for color in BLOCK_COLORS_RGB]
    left, right = scene.leftmost(AMBIGUITY_GAP_M), scene.rightmost(AMBIGUITY_GAP_M)
    if left is not None and len(scene.objects) >= 2:
        samples.append(("what color is the object on the left?", left.color))
    if right is not None and len(scene.objects) >= 2:
        samples.append(("what color is the object on the right?", right.color))
    nearest = scene.nearest_to(ROBOT_XY_M, AMBIGUITY_GAP_M)
    if nearest is not None and len(scene.objects) >= 2:
        samples.append(("what color is the block closest to the robot?", nearest.color))
    for a in scene.objects:
        for b in scene.objects:
            gap = abs(a.position_xy_m[1] - b.position_xy_m[1])
            if a is not b and gap >= AMBIGUITY_GAP_M:
                samples.append((f"is the {a.name} left of the {b.name}?",
                                _yes_no(scene.object_left_of(a.name, b.name))))
    return samples


POINT_COLUMNS = 8  # across the table, from the robot's left (+y) to its right
POINT_ROWS = 5  # along the table, from the far edge to the near edge


def point_samples(scene: Scene) -> list[tuple[str, str]]:
    """("point to the blue block", "column 3 row 2") per block: the block's cell in a grid
    over the table. The stand-in for a web VLM's pointing / detection data: the answer is
    the spatial fact a policy needs to reach the block, grounded in the image."""
    (x0, x1), (y0, y1) = scene.table.x_range_m, scene.table.y_range_m
    out = []
    for obj in scene.objects:
        x, y = obj.position_xy_m
        column = min(POINT_COLUMNS, int((y1 - y) / (y1 - y0) * POINT_COLUMNS) + 1)
        row = min(POINT_ROWS, int((x1 - x) / (x1 - x0) * POINT_ROWS) + 1)
        out.append((f"point to the {obj.name}", f"column {column} row {row}"))
    return out


def scene_caption(scene: Scene) -> str:
    """A caption listing the blocks from left to right: captioning co-training data."""
    names = [o.name for o in scene.objects_left_to_right()]
    if len(names) == 1:
        return f"a {names[0]} on a table"
    return "from left to right: " + ", ".join(names)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"
