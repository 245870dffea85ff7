"""Held-out action error of a checkpoint, split by the step its chunk starts at:
`python -m experiments.action_error_by_step CHECKPOINT [--episodes 64] [--steps 0 3 6 10 15]`.

A reach demonstration starts with the arm at rest at its home pose, so the chunk that
starts at step 0 can only come from the image and the instruction. Once the arm moves,
its pose already points at the target, and a policy can score well by continuing the
motion. This table separates the two (docs/demo_checkpoint.md). The scenes are the
held-out evaluation seeds; the flow expert samples with fixed noise (10 Euler steps).
Columns: the flow chunks' RMS error over the moving action dims in radians (the same for a
checkpoint that predicts offsets from the state, delta_action_dims, and one that predicts
absolute targets), the RMS error of predicting the mean chunk of those samples, and their
ratio (below 1: better than the mean; "-" where the chunks do not vary, e.g. holding still
with offsets).
"""

from __future__ import annotations

import argparse

import math

import torch

from ki_vla_ros.model.inference import Predictor
from ki_vla_ros.model.normalize import unnormalize
from experiments import evaluation as ev
from experiments.batches import ReachActionSampler
from experiments.tasks import EVAL_SEED_OFFSET, generate_reach_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a directory written by save_pretrained (single_arm)")
    parser.add_argument("--robot", default="single_arm")
    parser.add_argument("--episodes", type=int, default=64, help="held-out scenes (default 64)")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 3, 6, 10, 15])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = Predictor.from_pretrained(args.checkpoint, device="cpu", dtype="float32").model
    data = generate_reach_data(args.robot, range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + args.episodes),
                               model.config.image_size)
    bad = [t for t in args.steps if not 0 <= t < data.steps]
    if bad:
        parser.error(f"--steps {bad}: expected steps in [0, {data.steps})")
    sampler = ReachActionSampler(data, model.config, model.text_tokenizer, model.fast_tokenizer, model.norm_stats)
    dims = ev.active_action_dims(model.norm_stats["actions"])
    print(f"{args.checkpoint}: {args.episodes} held-out scenes, moving action dims {dims.tolist()}")
    stats = model.norm_stats["actions"]
    print(f"{'start step':>10s} {'flow rmse (rad)':>15s} {'mean-chunk rmse (rad)':>21s} {'ratio':>6s}")
    for t in args.steps:
        batch = sampler.batch_at([(e, t) for e in range(args.episodes)])
        noise = torch.randn(args.episodes, model.config.action_horizon, model.config.action_dim,
                            generator=torch.Generator().manual_seed(0))
        predicted, _ = ev.predict_normalized_chunks(model, batch, ev.FLOW, noise)
        # In robot units: a difference of offsets from the same state is a difference of targets.
        predicted = unnormalize(predicted, stats)[:, :, dims]
        expected = unnormalize(batch.actions[:, :, : stats.dim].numpy(), stats)[:, :, dims]
        rmse = math.sqrt(ev.chunk_mse(predicted, expected))
        mean_rmse = math.sqrt(ev.chunk_mse(expected.mean(0, keepdims=True).repeat(args.episodes, 0), expected))
        ratio = f"{rmse / mean_rmse:6.2f}" if mean_rmse > 1e-4 else f"{'-':>6s}"
        print(f"{t:>10d} {rmse:>15.4f} {mean_rmse:>21.4f} {ratio}")


if __name__ == "__main__":
    main()
