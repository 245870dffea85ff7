"""Pointing questions name the grid cell each block is in: column 1 at the robot's left
(+y) edge of the table, row 1 at the far edge; a block's cell agrees with where it is."""
from __future__ import annotations

import numpy as np

from ki_vla_ros.sim.scene import Scene, SceneObject, Table
from ki_vla_ros.sim.vqa import POINT_COLUMNS, POINT_ROWS, point_samples


def cell(answer: str) -> tuple[int, int]:
    words = answer.split()
    assert words[0] == "column" and words[2] == "row", answer
    return int(words[1]), int(words[3])


def test_corners_of_the_table_map_to_the_corner_cells():
    table = Table()
    (x0, x1), (y0, y1) = table.x_range_m, table.y_range_m
    scene = Scene((SceneObject("red", (x1 - 0.01, y1 - 0.01)),    # far left
                   SceneObject("blue", (x0 + 0.01, y0 + 0.01)),   # near right
                   SceneObject("green", (x1, y0))), table)         # exactly on the far right corner
    answers = dict(point_samples(scene))
    assert cell(answers["point to the red block"]) == (1, 1)
    assert cell(answers["point to the blue block"]) == (POINT_COLUMNS, POINT_ROWS)
    assert cell(answers["point to the green block"]) == (POINT_COLUMNS, 1)


def test_cells_follow_the_blocks_in_random_scenes():
    rng = np.random.default_rng(3)
    for _ in range(50):
        scene = Scene.sample(rng, int(rng.integers(2, 5)))
        answers = dict(point_samples(scene))
        assert len(answers) == len(scene.objects)
        for a in scene.objects:
            ca, ra = cell(answers[f"point to the {a.name}"])
            assert 1 <= ca <= POINT_COLUMNS and 1 <= ra <= POINT_ROWS
            for b in scene.objects:
                cb, rb = cell(answers[f"point to the {b.name}"])
                if a.position_xy_m[1] > b.position_xy_m[1]:  # a further left
                    assert ca <= cb
                if a.position_xy_m[0] > b.position_xy_m[0]:  # a further away
                    assert ra <= rb
