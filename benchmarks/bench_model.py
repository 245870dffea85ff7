#!/usr/bin/env python3
"""Per-chunk latency of KIVLA's three ways to produce an action chunk (random weights).

    flow+cache     one backbone pass over the prefix, then num_flow_steps expert passes reusing its K/V
    flow no-cache  the whole prefix (images included) recomputed at every step: the baseline
    FAST AR        greedy autoregressive decoding of FAST tokens (the π0-FAST baseline), then the DCT inverse

Prints a table and writes JSON. p50 / p99 over --runs calls after --warmup calls; ratios are
against the no-cache baseline (and FAST against flow+cache) measured in the same run.

    python benchmarks/bench_model.py                                # tiny, CPU, float32
    python benchmarks/bench_model.py --preset pi05 --device cuda    # bf16, 1/2/3 cameras, eager + compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.fast import FASTTokenizer
from ki_vla_ros.model.network import KIVLA, ModelInputs, count_parameters
from ki_vla_ros.model.precision import set_precision

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["tiny", "pi05"], default="tiny")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: bfloat16 on cuda, else float32")
    p.add_argument("--cameras", default=None, help="comma list; default 1,2,3 on cuda, the preset's count on cpu")
    p.add_argument("--modes", default=None, help="eager,compile (default: both on cuda, eager on cpu)")
    p.add_argument("--compile-mode", default="reduce-overhead",
                   help="torch.compile mode (reduce-overhead = CUDA graphs: one launch per step)")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--prompt-tokens", type=int, default=48, help="valid prompt tokens (padded to max_token_len)")
    p.add_argument("--fast-action-dim", type=int, default=8, help="robot action dims the FAST tokens code")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default="bench_model.json")
    return p.parse_args()


def make_inputs(model: KIVLA, cameras: int, prompt_tokens: int, seed: int = 0) -> ModelInputs:
    """One observation: random images, a prompt of prompt_tokens ids right-padded to max_token_len (as openpi)."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(1, c.max_token_len, dtype=torch.long)
    tokens[0, :prompt_tokens] = torch.randint(3, 250, (prompt_tokens,), generator=g)
    masks = torch.zeros(1, c.max_token_len, dtype=torch.bool)
    masks[0, :prompt_tokens] = True
    images = torch.rand(1, cameras, 3, c.image_size, c.image_size, generator=g) * 2 - 1
    return ModelInputs(images=images, image_masks=torch.ones(1, cameras, dtype=torch.bool), tokens=tokens,
                       token_masks=masks).to(model.device)


def fit_fast(config: KIVLAConfig, action_dim: int) -> tuple[FASTTokenizer, int]:
    """A FAST tokenizer fitted on smooth synthetic chunks, and its mean tokens per chunk (+ EOS)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, config.action_horizon)[None, :, None]
    chunks = 0.8 * np.sin(2 * np.pi * rng.uniform(0.2, 1.5, (256, 1, action_dim)) * t
                          + rng.uniform(0, 2 * np.pi, (256, 1, action_dim)))
    tok = FASTTokenizer.fit(chunks, vocab_size=config.fast_vocab_size)
    return tok, int(round(np.mean([len(tok.encode(ch)) for ch in chunks]))) + 1


def measure(fn, runs: int, warmup: int, device: torch.device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    row = {"p50_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99)),
           "mean_ms": statistics.fmean(times), "runs": runs}
    if device.type == "cuda":
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    dtype = DTYPES["bfloat16" if on_cuda else "float32"] if args.dtype == "auto" else DTYPES[args.dtype]
    config = KIVLAConfig.preset(args.preset)
    cameras = [int(x) for x in args.cameras.split(",")] if args.cameras else ([1, 2, 3] if on_cuda
                                                                                else [config.num_cameras])
    modes = args.modes.split(",") if args.modes else (["eager", "compile"] if on_cuda else ["eager"])

    torch.manual_seed(0)
    with torch.device(device):
        model = KIVLA(config)
    model = set_precision(model, dtype).eval()
    fast, fast_tokens = fit_fast(config, min(args.fast_action_dim, config.action_dim))
    model.fast_tokenizer = fast
    prompt_tokens = min(args.prompt_tokens, config.max_token_len)
    info = {"preset": args.preset, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "parameters": count_parameters(model), "threads": torch.get_num_threads(),
            "horizon": config.action_horizon, "action_dim": config.action_dim, "flow_steps": config.num_flow_steps,
            "prompt_tokens": prompt_tokens, "max_token_len": config.max_token_len, "fast_tokens": fast_tokens,
            "fast_action_dim": min(args.fast_action_dim, config.action_dim),
            "gpu": torch.cuda.get_device_name(device) if on_cuda else None, "cpu": platform.processor() or None,
            "torch": torch.__version__}
    print(" ".join(f"{k}={v}" for k, v in info.items() if v is not None))

    rows = []
    noise = torch.randn(1, config.action_horizon, config.action_dim, device=device)
    for mode in modes:
        if mode == "compile":
            # The flow path only: AR decoding grows its K/V every token (one shape per step).
            model._prefix_kv = torch.compile(model._prefix_kv, mode=args.compile_mode)
            model._run_expert = torch.compile(model._run_expert, mode=args.compile_mode)
        elif mode != "eager":
            raise SystemExit(f"--modes entry {mode!r}; expected eager or compile")
        for n_cam in cameras:
            inputs = make_inputs(model, n_cam, prompt_tokens)
            methods = {
                "flow+cache": lambda: model.sample_actions(inputs, noise=noise, use_kv_cache=True),
                "flow no-cache": lambda: model.sample_actions(inputs, noise=noise, use_kv_cache=False),
            }
            if mode == "eager":
                methods["FAST AR"] = lambda: model.decode_fast_actions(
                    inputs, max_new_tokens=fast_tokens, action_dim=info["fast_action_dim"], stop_at_eos=False)
            results = {}
            for name, fn in methods.items():
                heavy = name != "flow+cache"
                try:
                    results[name] = measure(fn, max(10, args.runs // 2) if heavy else args.runs, args.warmup, device)
                except Exception as e:  # e.g. a compile failure: report it, keep measuring the rest
                    print(f"{mode} {n_cam} cameras {name}: failed: {type(e).__name__}: {e}")
            if "flow no-cache" not in results:
                continue
            base = results["flow no-cache"]["p50_ms"]
            for name, r in results.items():
                r.update(method=name, mode=mode, cameras=n_cam, speedup_vs_no_cache=base / r["p50_ms"])
                if name == "FAST AR":
                    r["slowdown_vs_flow_cache"] = r["p50_ms"] / results["flow+cache"]["p50_ms"]
                rows.append(r)

    header = f"{'mode':8} {'cams':>4} {'method':14} {'p50 ms':>9} {'p99 ms':>9} {'vs no-cache':>11} {'note':>18}"
    print(header)
    print("-" * len(header))
    for r in rows:
        note = f"{r['slowdown_vs_flow_cache']:.1f}x flow+cache" if "slowdown_vs_flow_cache" in r else ""
        if "peak_mem_mib" in r:
            note = (note + " " if note else "") + f"{r['peak_mem_mib']:.0f} MiB"
        print(f"{r['mode']:8} {r['cameras']:>4} {r['method']:14} {r['p50_ms']:9.2f} {r['p99_ms']:9.2f} "
              f"{r['speedup_vs_no_cache']:10.2f}x {note:>18}")
    Path(args.out).write_text(json.dumps({"info": info, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
