"""How chunks join at injected latency: none / blend / rtc in SimRobot with the demo checkpoint.

    python benchmarks/bench_chunk_modes.py [--seeds 10] [--latencies-ms 0 100 300] [--json out.json]

Each (mode, latency) runs the same held-out reach episodes (seeds 1000..) on a virtual clock
(ki_vla_ros/sim/chunk_execution.py: a chunk is executed `latency` after its observation; the
model's own time does not count). Printed per cell, over all chunk boundaries of all seeds:

    seam p50 / max   |first new command - running command|, in per-step rate limits
                     (max_velocity * step_duration_s) before the safety filter; > 1 is a jump
                     the filter has to rate-limit
    step max         largest joint change per controller tick near a boundary (rad, arm joints)
    accel max        largest joint acceleration near a boundary (rad/s^2, arm joints)
    rate-limited     share of chunks the safety filter had to rate-limit
    success          reach success at the end of the episode
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.model_loading import load_predictor
from ki_vla_ros.sim.chunk_execution import CHUNK_MODES, run_chunk_execution

HELD_OUT_SEED_BASE = 1000  # the demo checkpoint's training episodes use low seeds


def model_time_ms(predictor, repeats: int = 20) -> tuple[float, float]:
    """Median predict_chunk time without and with RTC guidance (a backward pass per flow step)."""
    s = predictor.config.image_size
    images = [np.zeros((s, s, 3), np.uint8)] * predictor.num_cameras
    state = np.zeros(predictor.state_dim)
    previous = predictor.predict_chunk(images, state, "move to the red block")[3:]

    def median_ms(**kwargs) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            predictor.predict_chunk(images, state, "move to the red block", **kwargs)
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))

    return median_ms(), median_ms(previous_actions=previous, inference_delay_steps=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--latencies-ms", type=float, nargs="+", default=[0.0, 100.0, 300.0])
    parser.add_argument("--steps", type=int, default=40, help="chunk steps per episode")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_robot_config("single_arm")
    predictor = load_predictor(config, checkpoint="demo", device="cpu")
    rows = []
    plain_ms, guided_ms = model_time_ms(predictor)
    print(f"model time per chunk (CPU, 1 thread, median of 20): plain {plain_ms:.1f} ms, rtc-guided "
          f"{guided_ms:.1f} ms ({guided_ms / plain_ms:.2f}x)")
    print(f"single_arm, demo checkpoint, {args.seeds} held-out seeds, {args.steps} steps of "
          f"{config.chunk.step_duration_s} s, execute_steps {config.chunk.execute_steps}, "
          f"blend_steps {config.chunk.blend_steps}, rtc margin {config.chunk.rtc_margin_steps}")
    print(f"{'latency':>8} {'mode':>6} {'seam p50':>9} {'seam max':>9} {'step max':>9} {'accel max':>10} "
          f"{'rate-lim':>9} {'success':>8} {'wall s':>7}")
    for latency_ms in args.latencies_ms:
        for mode in CHUNK_MODES:
            t0 = time.perf_counter()
            runs = [run_chunk_execution(config, predictor, HELD_OUT_SEED_BASE + s, mode=mode,
                                        latency_s=latency_ms / 1e3, steps=args.steps) for s in range(args.seeds)]
            seams = np.concatenate([r.seam_gaps for r in runs])
            row = {
                "latency_ms": latency_ms, "mode": mode,
                "seam_p50": float(np.median(seams)), "seam_max": float(seams.max()),
                "boundary_max_step_rad": max(r.boundary_max_step_rad for r in runs),
                "boundary_max_accel_rad_s2": max(r.boundary_max_accel_rad_s2 for r in runs),
                "rate_limited_share": sum(r.rate_limited_chunks for r in runs) / sum(r.chunks for r in runs),
                "success": float(np.mean([r.success for r in runs])),
                "wall_s": time.perf_counter() - t0,
            }
            rows.append(row)
            print(f"{latency_ms:>6.0f}ms {mode:>6} {row['seam_p50']:>9.2f} {row['seam_max']:>9.2f} "
                  f"{row['boundary_max_step_rad']:>9.4f} {row['boundary_max_accel_rad_s2']:>10.1f} "
                  f"{row['rate_limited_share']:>9.2f} {row['success']:>8.2f} {row['wall_s']:>7.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": args.seeds, "steps": args.steps, "model_ms": {"plain": plain_ms, "rtc": guided_ms},
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
