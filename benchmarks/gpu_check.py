#!/usr/bin/env python3
"""The prepared device check: π0.5-size inference latency per path, and one KI training step, in < 10 min.

Random weights at π0.5 size (nothing is downloaded), bf16 with openpi's precision policy,
horizon 50, 10 flow steps, batch 1, prompt padded to max_token_len (200), for 1 / 2 / 3 cameras:

    eager          ChunkSampler, no compile, no graph (the baseline of the ratios)
    graph          the whole call (prefix pass + 10 expert steps) captured as one CUDA graph
    graph-expert   prefix pass eager, the 10-step expert loop replayed as a CUDA graph
    compiled       torch.compile (mode default) of the prefix pass and of one expert step
    compiled+graph the compiled parts, whole call captured as one CUDA graph

Prints per path and camera count: p50 / p99 ms per chunk, ratio to eager (same run), peak GPU
memory, max |actions - eager actions|, setup time (compile / capture); the SDPA kernels that
take these masks; one KI training step (time, peak memory). Every section runs under a time
guard (--budget-s); what did not fit is printed as skipped. JSON goes to --out (default
$OUT/gpu_check.json when $OUT is set, else gpu_check.json).

    python benchmarks/gpu_check.py                       # on the GPU machine (CUDA, bf16)
    python benchmarks/gpu_check.py --tiny --device cpu   # seconds on a CPU (the test runs this)

Needs torch, transformers, numpy, safetensors and this package's source (no rclpy, no OpenCV).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package source, when run as a script

from ki_vla_ros.model.config import KIVLAConfig  # noqa: E402
from ki_vla_ros.model.network import KIVLA, ModelInputs, repeat_kv_heads, count_parameters  # noqa: E402
from ki_vla_ros.model.precision import set_precision  # noqa: E402
from ki_vla_ros.model.sampler import ChunkSampler  # noqa: E402

PATHS = ("eager", "graph", "graph-expert", "compiled", "compiled+graph")
# Compiles last (after the training step): a slow compile then costs only its own rows.
COMPILED_PATHS = ("compiled", "compiled+graph", "max-autotune+graph")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny preset cut to one layer (CPU smoke run)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--cameras", default="1,2,3")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {PATHS}")
    p.add_argument("--runs", type=int, default=None, help="timed chunks per row (default 50 on cuda, 3 on cpu)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=48, help="valid prompt tokens, padded to max_token_len")
    p.add_argument("--train-batch", type=int, default=4, help="samples in the KI training step")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting sections after this (s)")
    p.add_argument("--compile-cap-s", type=float, default=240.0, help="longest one compile may take (s)")
    p.add_argument("--max-autotune", action="store_true", help="also time compile mode max-autotune (slow)")
    default_out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")
    p.add_argument("--out", type=Path, default=default_out)
    return p.parse_args(argv)


class Budget:
    """The run's time budget; `guard` runs a section only if enough is left and cuts it at a cap."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, what: str, need_s: float) -> bool:
        if self.left() >= need_s:
            return True
        self.skipped.append(f"{what}: {self.left():.0f} s left, needs about {need_s:.0f} s")
        print(f"skipped {self.skipped[-1]}", flush=True)
        return False

    @contextlib.contextmanager
    def cap(self, seconds: float):
        """Raise TimeoutError in the main thread after `seconds` (a stuck compile cannot eat the run)."""
        seconds = max(1, int(min(seconds, self.left())))

        def stop(signum, frame):
            raise TimeoutError(f"over its {seconds} s cap")

        old = signal.signal(signal.SIGALRM, stop)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, runs: int, warmup: int, device: torch.device) -> dict:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99)), "runs": runs}


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def model_config(tiny: bool) -> KIVLAConfig:
    if tiny:
        return dataclasses.replace(KIVLAConfig.preset("tiny"), depth=1, expert_depth=1, vision_depth=1,
                                   max_token_len=128)  # room for a 14-dim byte-level state text
    return KIVLAConfig.preset("pi05")


def make_inputs(config: KIVLAConfig, cameras: int, prompt_tokens: int, device, seed: int = 0) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    s = config.image_size
    return ModelInputs(images=torch.rand(1, cameras, 3, s, s, generator=g) * 2 - 1,
                       image_masks=torch.ones(1, cameras, dtype=torch.bool),
                       tokens=torch.randint(3, 250, (1, prompt_tokens), generator=g),
                       token_masks=torch.ones(1, prompt_tokens, dtype=torch.bool)).to(device)


# ----------------------------------------------------------------------------- sections
def attention_kernels(config: KIVLAConfig, cameras: int, prompt_len: int, dtype, device, runs: int) -> list[dict]:
    """Which SDPA kernels take the model's masks, and how fast, at the prefix and expert shapes."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    p = cameras * config.tokens_per_image + prompt_len
    h, kvh, hd = config.num_heads, config.num_kv_heads, config.head_dim
    rows = []
    for name, nq, nk in (("prefix", p, p), ("expert", config.action_horizon, p + config.action_horizon)):
        q = torch.randn(1, h, nq, hd, device=device, dtype=dtype)
        k, v = (torch.randn(1, kvh, nk, hd, device=device, dtype=dtype) for _ in range(2))
        bias = torch.zeros(1, 1, nq, nk, device=device, dtype=dtype)
        bias[..., nk - 20:] = torch.finfo(dtype).min / 2  # some keys masked, as padding is
        k_rep, v_rep = (repeat_kv_heads(t, h) for t in (k, v))
        variants = {
            "gqa, any kernel": (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True), None),
            "repeated kv, any kernel": (lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=bias), None),
        }
        for backend in ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "FLASH_ATTENTION", "MATH"):
            variants[f"repeated kv, {backend.lower()} only"] = (
                lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=bias), getattr(SDPBackend, backend))
        reference = F.scaled_dot_product_attention(q.float(), k_rep.float(), v_rep.float(), attn_mask=bias.float())
        for variant, (fn, backend) in variants.items():
            row = {"shape": name, "q_tokens": nq, "kv_tokens": nk, "variant": variant}
            try:
                with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                    row["max_abs_vs_fp32"] = float((fn().float() - reference).abs().max())
                    row.update(timed(fn, runs, 2, device))
            except RuntimeError as e:  # the kernel does not take these inputs
                row["error"] = str(e).splitlines()[0][:160]
            rows.append(row)
    return rows


def latency_rows(model: KIVLA, paths: list[str], eager_actions: dict[int, tuple[torch.Tensor, ...]], args,
                 budget: Budget, device, results: dict, write) -> None:
    """Each path x camera count: p50 / p99 ms, peak memory, action difference against eager on
    two observations (eager_actions: cameras -> actions, filled by the eager rows; same weights)."""
    config = model.config
    cameras = [int(c) for c in args.cameras.split(",")]
    if 2 in cameras:  # the target figure first, should the budget run out
        cameras.remove(2)
        cameras.insert(0, 2)
    prompt = min(args.prompt_tokens, config.max_token_len)
    # Two observations: the second, after the timing, checks that a replayed graph reads new inputs.
    observations = [({n: make_inputs(config, n, prompt, device, seed) for n in cameras},
                     torch.randn(1, config.action_horizon, config.action_dim,
                                 generator=torch.Generator().manual_seed(seed)).to(device)) for seed in (1, 2)]
    (inputs, noise), (other_inputs, other_noise) = observations
    samplers: dict[str, ChunkSampler] = {}  # by compile mode: compiled+graph reuses the compiled parts
    for path in paths:
        graph = "graph" in path
        if graph and device.type != "cuda":
            budget.skipped.append(f"{path}: CUDA graphs need a CUDA device (this run: {device})")
            print(f"skipped {budget.skipped[-1]}", flush=True)
            continue
        compile_mode = "max-autotune" if path.startswith("max-autotune") else \
            "default" if path.startswith("compiled") else "off"
        need = 60.0 if compile_mode != "off" else 10.0
        if not budget.allows(path, need):
            continue
        if compile_mode not in samplers:
            samplers[compile_mode] = ChunkSampler(model, compile=compile_mode)
        sampler = samplers[compile_mode]
        if graph:
            sampler.enable_cuda_graph("expert" if path == "graph-expert" else "full")
        else:
            sampler.cuda_graph = False
        for n in cameras:
            if not budget.allows(f"{path} {n} cameras", need):
                break
            row = {"path": path, "cameras": n}
            try:
                reset_peak(device)
                t0 = time.perf_counter()
                with budget.cap(args.compile_cap_s if compile_mode != "off" else budget.left()):
                    first = sampler(inputs[n], noise)
                    sync(device)
                row["setup_s"] = time.perf_counter() - t0
                row.update(timed(lambda: sampler(inputs[n], noise), args.runs, args.warmup, device))
                row["peak_mem_mib"] = peak_mib(device)
                actions = (first, sampler(other_inputs[n], other_noise))
                if path == "eager":
                    eager_actions[n] = actions
                elif n in eager_actions:
                    row["max_abs_vs_eager"] = max(float((a - e).abs().max()) for a, e in zip(actions, eager_actions[n]))
            except (TimeoutError, RuntimeError) as e:  # e.g. a compile over its cap: report, go on
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                results["interrupted"] = results.get("interrupted", False) or isinstance(e, TimeoutError)
                print(f"{path} {n} cameras failed: {row['error']}", flush=True)
                results["latency"].append(row)
                break
            results["latency"].append(row)
            print(f"{path:15} {n} cam  p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  "
                  f"setup {row['setup_s']:6.1f} s", flush=True)
            write()
    base = {r["cameras"]: r["p50_ms"] for r in results["latency"] if r["path"] == "eager" and "p50_ms" in r}
    for r in results["latency"]:
        if "p50_ms" in r and r["cameras"] in base:
            r["speedup_vs_eager"] = base[r["cameras"]] / r["p50_ms"]


def camera_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """n 480x640 RGB uint8 frames (gradients plus noise), as a camera driver hands them over."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640]
    base = np.stack([xx * 255 // 639, yy * 255 // 479, (xx + yy) % 256], -1)
    return [np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def preprocessing_rows(cameras: int, size: int, device: torch.device, runs: int) -> list[dict]:
    """resize-with-pad of `cameras` 480x640 frames: OpenCV on the CPU against torch on `device`."""
    from ki_vla_ros.model.inference import prepare_images

    frames = camera_frames(cameras)
    rows, reference = [], None
    for where, target in (("cpu, OpenCV", None), (f"{device}, torch", device)):
        row = {"where": where, "cameras": cameras}
        try:
            fn = lambda: prepare_images(frames, cameras, size, target)  # noqa: E731
            pixels = fn()[0].cpu()
            row.update(timed(fn, runs, 2, device))
            if reference is None:
                reference = pixels
            else:
                row["max_abs_vs_opencv"] = float((pixels - reference).abs().max())
        except ImportError as e:  # no OpenCV on this machine: the device path still runs
            row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
    return rows


def predictor_rows(model: KIVLA, args, budget: Budget, device: torch.device) -> list[dict]:
    """End to end as the robot node calls it: 480x640 frames, a 14-dim state and a task in, a chunk
    in robot units out (prompt tokenization, preprocessing on the GPU, sampling, copy back)."""
    from ki_vla_ros.model.inference import Predictor
    from ki_vla_ros.model.normalize import NormStats
    from ki_vla_ros.model.text_tokenizer import ByteTokenizer

    c = model.config
    model.text_tokenizer = ByteTokenizer(c.vocab_size)
    model.norm_stats = {"state": NormStats.identity(14), "actions": NormStats.identity(14)}
    frames, state = camera_frames(c.num_cameras), np.linspace(-0.9, 0.9, 14)
    noise = np.random.default_rng(0).standard_normal((c.action_horizon, c.action_dim)).astype(np.float32)
    rows, reference = [], None
    for name, options in (("predictor eager", {}), ("predictor graph", {"cuda_graph": True})):
        if options and device.type != "cuda":
            budget.skipped.append(f"{name}: CUDA graphs need a CUDA device (this run: {device})")
            continue
        if not budget.allows(name, 15):
            continue
        row = {"path": name, "cameras": c.num_cameras}
        try:
            predictor = Predictor(model, **options)
            fn = lambda: predictor.predict_chunk(frames, state, "fold the towel", noise=noise)  # noqa: E731
            t0 = time.perf_counter()
            chunk = fn()
            row["setup_s"] = time.perf_counter() - t0
            row.update(timed(fn, args.runs, args.warmup, device))
            if reference is None:
                reference = chunk
            else:
                row["max_abs_vs_eager"] = float(np.abs(chunk - reference).max())
        except (RuntimeError, ValueError, ImportError) as e:  # ImportError: OpenCV, for a CPU model
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        rows.append(row)
    return rows


def training_step(config: KIVLAConfig, batch_size: int, device, budget: Budget) -> dict:
    """One KI step (forward, backward, AdamW). On CUDA: benchmarks/train_memory.py's
    `one_ki_step` at π0.5 size with activation checkpointing (the memory plan's measurement,
    comparable with docs/train_memory.json). Elsewhere (the --tiny CPU run): a plain step of
    `config` here: fp32 weights, AdamW, no activation checkpointing."""
    import importlib.util

    note = ""
    if device.type == "cuda":
        path = Path(__file__).with_name("train_memory.py")
        try:
            spec = importlib.util.spec_from_file_location("train_memory", path)
            if not path.is_file() or spec is None:
                raise ImportError(f"no {path.name} next to gpu_check.py")
            train_memory = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(train_memory)
            one_ki_step = train_memory.one_ki_step
        except (ImportError, AttributeError) as e:
            note = f"n/a: benchmarks/train_memory.py one_ki_step ({type(e).__name__}: {e}); plain step timed here"
            print(note, flush=True)
        else:
            result = one_ki_step(device, batch_size=batch_size, activation_checkpointing=True, runs=3)
            return {"source": "train_memory.one_ki_step", **result, "step_ms": result["step_s"] * 1e3,
                    "peak_mem_mib": result["peak_allocated_bytes"] / 2**20}
    torch.manual_seed(0)
    with torch.device(device):
        model = KIVLA(config).train()
    batch = model.example_batch(batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step():
        with autocast:
            loss = model.compute_loss(batch, "ki")["total"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    times = []
    for _ in range(3):  # the first builds the optimizer state
        if times and budget.left() < 2 * times[-1] / 1e3:
            break
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    result = {"source": "plain step (gpu_check.py)", "note": note, "batch_size": batch_size,
              "parameters": count_parameters(model), "first_step_ms": times[0],
              "step_ms": statistics.median(times[1:]) if len(times) > 1 else None, "peak_mem_mib": peak_mib(device),
              "precision": "fp32 weights + AdamW, bf16 autocast" if device.type == "cuda" else "fp32"}
    del model, optimizer
    return result


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device; run with --tiny --device cpu off the GPU machine")
    args.runs = args.runs or (50 if device.type == "cuda" else 3)
    budget = Budget(args.budget_s)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = model_config(args.tiny)
    results: dict = {"info": {
        "date": time.strftime("%Y-%m-%d %H:%M"), "preset": "tiny (1 layer)" if args.tiny else "pi05",
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
        "transformers": transformers.__version__, "horizon": config.action_horizon,
        "flow_steps": config.num_flow_steps, "prompt_len": config.max_token_len, "runs": args.runs},
        "attention": [], "latency": [], "preprocessing": [], "predictor": [], "training_step": None, "skipped": budget.skipped}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write():
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    print(" ".join(f"{k}={v}" for k, v in results["info"].items() if v is not None), flush=True)
    if budget.allows("attention kernels", 20):
        results["attention"] = attention_kernels(config, 2, config.max_token_len, dtype, device,
                                                 runs=20 if device.type == "cuda" else 2)
        write()

    paths = [p for p in args.paths.split(",") if p]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise SystemExit(f"--paths has {unknown}; expected a comma list of {list(PATHS)}")
    if args.max_autotune:
        paths.append("max-autotune+graph")
    else:
        budget.skipped.append("max-autotune: not asked for (--max-autotune; its compile takes minutes)")
    # One compiled function serves 3 camera counts x (plain, graph) x modes: room for all of them.
    for limit in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 32))

    def inference_model() -> KIVLA:
        torch.manual_seed(0)
        with torch.device(device):
            return set_precision(KIVLA(config), dtype).eval()

    model = inference_model()
    results["info"]["parameters"] = count_parameters(model)
    eager_actions: dict[int, tuple[torch.Tensor, ...]] = {}
    latency_rows(model, [p for p in paths if p not in COMPILED_PATHS], eager_actions, args, budget, device, results,
                 write)
    if budget.allows("preprocessing", 10):
        results["preprocessing"] = preprocessing_rows(3, config.image_size, device, args.runs)
    try:
        results["predictor"] = predictor_rows(model, args, budget, device)
    except ImportError as e:  # the byte tokenizer's module needs sentencepiece
        budget.skipped.append(f"predictor: {type(e).__name__}: {e}")
    write()
    del model  # the training step builds its own fp32 model
    free(device)
    if budget.allows("KI training step", 30 if device.type == "cuda" else 5):
        try:
            results["training_step"] = training_step(config, args.train_batch, device, budget)
        except (RuntimeError, TimeoutError) as e:  # torch.OutOfMemoryError is a RuntimeError
            results["training_step"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        free(device)
    write()
    compiled = [p for p in paths if p in COMPILED_PATHS]
    if compiled and budget.allows("compiled paths", 60):
        latency_rows(inference_model(), compiled, eager_actions, args, budget, device, results, write)
    write()
    print_tables(results)
    print(f"wrote {args.out}")
    return results


def print_tables(results: dict) -> None:
    print("\nSDPA kernels on the model's masks (2 cameras; 'error' = the kernel does not take them)")
    for r in results["attention"]:
        speed = f"p50 {r['p50_ms']:7.3f} ms  max|d| {r['max_abs_vs_fp32']:.1e}" if "p50_ms" in r else r["error"]
        print(f"  {r['shape']:6} {r['q_tokens']:4}x{r['kv_tokens']:<4} {r['variant']:32} {speed}")
    print(f"\nper chunk: {results['info']['preset']}, {results['info']['dtype']}, horizon {results['info']['horizon']}, "
          f"{results['info']['flow_steps']} steps, prompt padded to {results['info']['prompt_len']}")
    header = (f"{'path':15} {'cams':>4} {'p50 ms':>9} {'p99 ms':>9} {'vs eager':>9} {'peak MiB':>9} "
              f"{'max|a-eager|':>13} {'setup s':>8}")
    print(header)
    print("-" * len(header))
    for r in results["latency"]:
        if "error" in r:
            print(f"{r['path']:15} {r['cameras']:>4}  {r['error']}")
            continue
        mem = f"{r['peak_mem_mib']:9.0f}" if r.get("peak_mem_mib") is not None else f"{'-':>9}"
        diff = f"{r['max_abs_vs_eager']:13.2e}" if "max_abs_vs_eager" in r else f"{'-':>13}"
        ratio = f"{r['speedup_vs_eager']:8.2f}x" if "speedup_vs_eager" in r else f"{'-':>9}"
        print(f"{r['path']:15} {r['cameras']:>4} {r['p50_ms']:9.2f} {r['p99_ms']:9.2f} {ratio} {mem} {diff} "
              f"{r['setup_s']:8.1f}")
    print("\nresize-with-pad of 3 frames 480x640 -> [1, 3, 3, S, S]")
    for r in results["preprocessing"]:
        detail = r.get("error") or (f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms" + (
            f"  max|d| vs OpenCV {r['max_abs_vs_opencv']:.4f}" if "max_abs_vs_opencv" in r else ""))
        print(f"  {r['where']:16} {detail}")
    print("\nPredictor.predict_chunk end to end (480x640 frames, 14-dim state, robot units out)")
    for r in results["predictor"]:
        detail = r.get("error") or (f"p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  setup {r['setup_s']:.1f} s"
                                    + (f"  max|d| vs eager {r['max_abs_vs_eager']:.2e}" if "max_abs_vs_eager" in r
                                       else ""))
        print(f"  {r['path']:16} {r['cameras']} cams  {detail}")
    step = results["training_step"]
    if step is None:
        print("\nKI training step: skipped")
    elif "error" in step:
        print(f"\nKI training step: {step['error']}")
    else:
        mem = f"{step['peak_mem_mib']:.0f} MiB" if step.get("peak_mem_mib") is not None else "-"
        ms = f"{step['step_ms']:.0f} ms" if step.get("step_ms") is not None else "-"
        print(f"\nKI training step ({step['source']}, batch {step.get('batch_size')}): {ms} "
              f"(first {step.get('first_step_ms', 0):.0f} ms), peak {mem}")
    for s in results["skipped"]:
        print(f"skipped: {s}")


if __name__ == "__main__":
    if main().get("interrupted"):
        # A compile cut by its cap may leave compile workers behind; exiting normally would wait for them.
        sys.stdout.flush()
        os._exit(0)
