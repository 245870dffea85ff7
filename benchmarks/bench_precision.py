#!/usr/bin/env python3
"""Action difference of bf16 inference against fp32, π0.5 widths at a reduced depth (random weights).

Same weights, inputs and noise; one action chunk (horizon 50, 10 flow steps) per precision:

    fp32            the reference
    bf16 openpi     precision.set_precision: bf16, RMSNorms + SigLIP patch/position embeddings fp32
    bf16 all        every parameter cast to bf16 (`model.to(torch.bfloat16)`)

Prints max / mean |difference| of the normalized actions against fp32 and the fp32 actions'
RMS (the scale the difference is read against), and writes JSON. Depth is reduced so it runs
on a CPU; the widths, heads, head_dim, horizon and action dim are π0.5's.

    python benchmarks/bench_precision.py                    # depth 2, 1 camera, CPU
    python benchmarks/bench_precision.py --depth 18 --vision-depth 27 --device cuda   # full size
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.network import KIVLA, ModelInputs
from ki_vla_ros.model.precision import set_precision


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=2, help="Gemma backbone and expert depth (π0.5: 18)")
    p.add_argument("--vision-depth", type=int, default=2, help="SigLIP depth (π0.5: 27)")
    p.add_argument("--cameras", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--vocab", type=int, default=1024, help="vocabulary rows (π0.5: 257152; no effect on actions)")
    p.add_argument("--seeds", type=int, default=2, help="random models (and inputs) to average over")
    p.add_argument("--trained-like-norms", action=argparse.BooleanOptionalAction, default=True,
                   help="random RMSNorm scales and adaRMS projections instead of their zero init (which "
                        "bf16 holds exactly, hiding what the fp32 policy protects)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench_precision.json")
    return p.parse_args()


def reduced_pi05(depth: int, vision_depth: int, vocab: int, cameras: int) -> KIVLAConfig:
    return dataclasses.replace(KIVLAConfig.preset("pi05"), depth=depth, expert_depth=depth,
                               vision_depth=vision_depth, vocab_size=vocab, num_cameras=cameras)


def trained_like_norms(model: KIVLA, seed: int) -> None:
    """Give the zero-initialized norm parameters trained-like values: Gemma RMSNorm scales (1 + w)
    spread around 1, adaRMS scale/shift/gate projections of the time condition's size."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    from ki_vla_ros.model.network import AdaptiveRMSNorm

    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, GemmaRMSNorm):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * 0.5)
            elif isinstance(module, AdaptiveRMSNorm):
                w = module.dense.weight
                w.copy_(torch.randn(w.shape, generator=g) * 0.5 / w.shape[1] ** 0.5)


def random_inputs(config: KIVLAConfig, prompt_tokens: int, seed: int) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    n, s = config.num_cameras, config.image_size
    return ModelInputs(images=torch.rand(1, n, 3, s, s, generator=g) * 2 - 1,
                       image_masks=torch.ones(1, n, dtype=torch.bool),
                       tokens=torch.randint(3, config.vocab_size - 200, (1, prompt_tokens), generator=g),
                       token_masks=torch.ones(1, prompt_tokens, dtype=torch.bool))


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = reduced_pi05(args.depth, args.vision_depth, args.vocab, args.cameras)
    variants = {
        "bf16 openpi": lambda m: set_precision(m, torch.bfloat16),
        "bf16 all": lambda m: m.to(torch.bfloat16),
    }
    rows = {name: {"max_abs": [], "mean_abs": []} for name in variants}
    ref_rms = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        with torch.device(device):
            model = KIVLA(config).eval()
        if args.trained_like_norms:
            trained_like_norms(model, seed)
        inputs = random_inputs(config, args.prompt_tokens, seed).to(device)
        noise = torch.randn(1, config.action_horizon, config.action_dim, generator=torch.Generator().manual_seed(seed))
        t0 = time.perf_counter()
        ref = model.sample_actions(inputs, noise=noise.to(device))
        print(f"seed {seed}: fp32 chunk in {time.perf_counter() - t0:.1f} s")
        ref_rms.append(float(ref.pow(2).mean().sqrt()))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for name, cast in variants.items():
            model.load_state_dict(state)
            model.float()
            cast(model)
            t0 = time.perf_counter()
            out = model.sample_actions(inputs, noise=noise.to(device))
            diff = (out - ref).abs()
            rows[name]["max_abs"].append(float(diff.max()))
            rows[name]["mean_abs"].append(float(diff.mean()))
            print(f"seed {seed}: {name} chunk in {time.perf_counter() - t0:.1f} s, max |diff| {float(diff.max()):.4f}")

    rms = sum(ref_rms) / len(ref_rms)
    print(f"\nπ0.5 widths, depth {args.depth}, vision depth {args.vision_depth}, {args.cameras} camera(s), "
          f"horizon {config.action_horizon}, {config.num_flow_steps} steps, {args.seeds} seeds, {device}")
    header = f"{'precision':12} {'max |a - a_fp32|':>17} {'mean |a - a_fp32|':>18} {'mean / fp32 RMS':>16}"
    print(header)
    print("-" * len(header))
    result = {}
    for name, r in rows.items():
        mx, mean = max(r["max_abs"]), sum(r["mean_abs"]) / len(r["mean_abs"])
        result[name] = {"max_abs": mx, "mean_abs": mean, "mean_rel_to_rms": mean / rms}
        print(f"{name:12} {mx:17.4f} {mean:18.4f} {mean / rms:16.4f}")
    print(f"fp32 actions RMS {rms:.3f}")
    info = {"trained_like_norms": args.trained_like_norms, "depth": args.depth, "vision_depth": args.vision_depth, "cameras": args.cameras,
            "prompt_tokens": args.prompt_tokens, "seeds": args.seeds, "device": str(device),
            "fp32_rms": rms, "torch": torch.__version__}
    Path(args.out).write_text(json.dumps({"info": info, "results": result}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
