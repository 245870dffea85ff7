"""Simulator speed and expert quality: `python benchmarks/bench_sim.py [--json PATH]`.

Prints one table per measurement (medians and p99 after warm-up, as DESIGN.md section 5
asks) and optionally writes the same numbers as JSON:
  render      ms per image for one overview camera at several sizes
  step        ms per 0.1 s of simulated time (5 controller ticks at 50 Hz) per embodiment
  expert      scripted-expert success rate and final distance over N seeds per embodiment,
              with the time one demonstration takes to generate
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.sim.render import overview_view, render_top_down
from ki_vla_ros.sim.robot import SimRobot
from ki_vla_ros.sim.tasks import generate_episode

EMBODIMENTS = ("single_arm", "bimanual", "mobile")
RENDER_SIZES_PX = ((96, 96), (224, 224), (640, 480))


def _timed_ms(fn, repeats: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.median(samples)), "p99_ms": float(np.percentile(samples, 99))}


def measure_render(repeats: int) -> dict[str, dict[str, float]]:
    robot = SimRobot(load_robot_config("bimanual"), seed=0, num_objects=4)
    arms = robot.arm_drawings()
    results = {}
    for width, height in RENDER_SIZES_PX:
        view = overview_view(robot.base_pose, width, height)
        results[f"{width}x{height}"] = _timed_ms(
            lambda: render_top_down(view, robot.scene, arms), repeats)
    return results


def measure_step(repeats: int) -> dict[str, dict[str, float]]:
    results = {}
    for name in EMBODIMENTS:
        config = load_robot_config(name)
        robot = SimRobot(config, seed=0)
        base_dims = config.action_dim - len(config.joints)
        action = np.array([robot.home[j] for j in config.joints] + [0.1] * base_dims)
        clock = {"now_s": 0.0}

        def advance() -> None:
            robot.apply_action(action, clock["now_s"], 0.1)
            clock["now_s"] += 0.1
            robot.step(clock["now_s"])

        results[name] = _timed_ms(advance, repeats)
    return results


def measure_expert(seeds: int) -> dict[str, dict[str, float]]:
    results = {}
    for name in EMBODIMENTS:
        config = load_robot_config(name)
        start = time.perf_counter()
        episodes = [generate_episode(config, seed) for seed in range(seeds)]
        elapsed_s = time.perf_counter() - start
        distances = np.array([e["final_distance_m"] for e in episodes])
        results[name] = {
            "success_rate": float(np.mean([e["success"] for e in episodes])),
            "final_distance_mm_p50": float(np.median(distances) * 1e3),
            "final_distance_mm_max": float(distances.max() * 1e3),
            "steps": int(episodes[0]["actions"].shape[0]),
            "episode_ms": elapsed_s / seeds * 1e3,
        }
    return results


def _print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    columns = list(next(iter(rows.values())))
    print(f"\n{title}")
    print(f"{'':<12}" + "".join(f"{c:>24}" for c in columns))
    for key, row in rows.items():
        print(f"{key:<12}" + "".join(f"{row[c]:>24.4g}" for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = {"render_overview": measure_render(args.repeats),
               "step_0.1s": measure_step(args.repeats),
               "expert": measure_expert(args.seeds)}
    for title, rows in results.items():
        _print_table(title, rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
