#!/usr/bin/env python3
"""Memory plan for KI training at π0.5 size: what each strategy keeps per GPU, measured on CPU.

What is measured (CPU, π0.5 widths, depths cut to 1-2 layers, batch 1):
    state bytes / parameter   params + gradients + AdamW moments of a real optimizer step, summed
                              over the actual tensors (trainable and frozen parameters apart)
    activation bytes / sample what autograd keeps from the forward pass for the backward pass
                              (saved_tensors_hooks, storages counted once, parameters excluded, plus
                              the layer inputs a checkpointed layer keeps), under bf16 autocast as
                              on a GPU, with and without activation checkpointing
    step time                 forward + backward + AdamW at the cut depth (fp32, CPU; vocabulary
                              cut to 16k so the optimizer state fits a small machine)

Extrapolation: activations are linear in depth (3 cuts: vision 1/2 layers x Gemma+expert 1/2
layers give the per-layer slopes), so full = base + 27 vision layers + 18 Gemma/expert layers.
The plan per GPU (capacity C, W GPUs, P parameters, A activation bytes per sample):

    full (single/DDP)    16 B x P + autocast's bf16 weight copies          + A x b
    fsdp                 16 B x P / W + gathered working set (root group + 2 layers in bf16 and
                         their fp32 gradients before the reduce-scatter) + A x b
    LoRA                 4 B x P_frozen + 16 B x P_trainable + weight copies + A x b
    (bf16 autocast keeps a bf16 copy of every weight it used for backward, 2 B x P; with
    checkpointing only of the weights outside the layers: embedding/head, projector, expert I/O)
    usable               C x 0.9 - 1.5 GB (CUDA context, allocator fragmentation)

largest b = floor((usable - state) / A); the global batch is b x W (more with --grad-accum).

    python benchmarks/train_memory.py                         # the plan (CPU, a few minutes)
    python benchmarks/train_memory.py --cuda-step --batch-size 8 --activation-checkpointing
                                                              # one real π0.5 KI step on the GPU

From other scripts (the GPU check): `one_ki_step(device, batch_size, ...)` -> step time and peak
memory of a full-size KI training step; `plan_bytes(plan, strategy, batch_size, gpus)` -> the
plan's prediction for the same setup, to compare.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import math
import multiprocessing
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers.modeling_utils as hf_modeling_utils

from ki_vla_ros.model import network
from ki_vla_ros.model.config import KIVLAConfig
from ki_vla_ros.model.network import KIVLA, TrainingBatch
from ki_vla_ros.train.lora import LORA_TARGETS
from ki_vla_ros.train.trainer import TrainConfig, make_optimizer, prepare_parameters

GB = 1e9
SETUPS = {"1 x 24 GB": (24, 1), "1 x 80 GB": (80, 1), "8 x 80 GB": (80, 8)}  # name -> (GB per GPU, GPUs)
STRATEGY_ROWS = ("full", "full + ckpt", "fsdp", "fsdp + ckpt", "LoRA", "LoRA + ckpt")
RESERVE_FRACTION, RESERVE_BYTES = 0.10, 1.5 * GB
TIMING_VOCAB = 16384


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt-tokens", type=int, default=200, help="prompt tokens per sample (π0.5 pads to 200)")
    p.add_argument("--target-tokens", type=int, default=64, help="FAST / text target tokens per sample")
    p.add_argument("--cameras", type=int, default=3)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--timing-runs", type=int, default=1, help="timed steps at the cut depth (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="train_memory.json")
    p.add_argument("--cuda-step", action="store_true", help="time one full-size π0.5 KI step on CUDA instead")
    p.add_argument("--device", default="cuda", help="device of --cuda-step")
    p.add_argument("--batch-size", type=int, default=8, help="batch of --cuda-step")
    p.add_argument("--activation-checkpointing", action="store_true", help="for --cuda-step")
    p.add_argument("--plan", default=None, help="plan JSON (from a CPU run) to compare --cuda-step with")
    return p.parse_args()


# ----------------------------------------------------------------------------- inputs
def cut_config(vision_depth: int | None, depth: int | None) -> KIVLAConfig:
    """π0.5 widths; depths cut (None = full: 27 vision, 18 Gemma + expert layers)."""
    full = KIVLAConfig.preset("pi05")
    return dataclasses.replace(full, vision_depth=vision_depth or full.vision_depth,
                               depth=depth or full.depth, expert_depth=depth or full.expert_depth)


def make_batch(config: KIVLAConfig, batch_size: int, cameras: int, prompt_tokens: int, target_tokens: int,
               seed: int = 0) -> TrainingBatch:
    """A robot-sample batch at the given token counts (every token valid: the worst case)."""
    g = torch.Generator().manual_seed(seed)
    b, s, h, d = batch_size, config.image_size, config.action_horizon, config.action_dim
    fast_low = config.vocab_size - 128 - config.fast_vocab_size
    targets = torch.randint(fast_low, config.vocab_size - 128, (b, target_tokens), generator=g)
    return TrainingBatch(
        images=torch.rand(b, cameras, 3, s, s, generator=g) * 2 - 1, image_masks=torch.ones(b, cameras, dtype=torch.bool),
        tokens=torch.randint(3, 250, (b, prompt_tokens), generator=g), token_masks=torch.ones(b, prompt_tokens, dtype=torch.bool),
        target_tokens=targets, target_masks=torch.ones(b, target_tokens, dtype=torch.bool),
        target_loss_masks=torch.ones(b, target_tokens, dtype=torch.bool),
        actions=torch.randn(b, h, d, generator=g).clamp(-1, 1), has_actions=torch.ones(b, dtype=torch.bool),
        noise=torch.randn(b, h, d, generator=g), time=torch.rand(b, generator=g) * 0.999 + 0.001)


# ----------------------------------------------------------------------------- measurements
def parameter_counts(config: KIVLAConfig, lora_rank: int) -> dict[str, int]:
    """Counts of the full-size model (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = KIVLA(config)
    lm = model.backbone.model.language_model
    vision = model.backbone.model.vision_tower
    layer_groups = [*lm.layers, *vision.encoder.layers, *model.action_expert.layers]
    in_layers = {id(p) for layer in layer_groups for p in layer.parameters()}
    params = {id(p): p for p in model.parameters()}
    adapters = sum(lora_rank * (getattr(parent, name).in_features + getattr(parent, name).out_features)
                   for layer in lm.layers for parent in (layer.self_attn, layer.mlp) for name in LORA_TARGETS
                   if hasattr(parent, name))
    return {
        "total": sum(p.numel() for p in params.values()),
        "vision": sum(p.numel() for p in vision.parameters()),
        "expert": sum(p.numel() for p in model.action_expert.parameters()),
        "root_group": sum(p.numel() for i, p in params.items() if i not in in_layers),
        "largest_layer": max(sum(p.numel() for p in layer.parameters()) for layer in layer_groups),
        "lora_adapters": adapters,
    }


@contextlib.contextmanager
def count_saved_bytes(model: torch.nn.Module):
    """Bytes autograd keeps for backward during the block: saved tensors (each storage once,
    parameters excluded) plus the inputs of checkpointed layers (which the checkpoint keeps).
    -> {"activations": bytes, "weight_copies": bytes}: a saved tensor shaped like a parameter is
    autocast's bf16 copy of that weight (once per step, whatever the batch), not an activation."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_shapes = {shape for p in model.parameters() if p.dim() >= 2  # linear saves its weight transposed
                    for shape in (tuple(p.shape), tuple(reversed(p.shape)))}
    seen: dict[int, tuple[int, bool]] = {}
    result = {"activations": 0, "weight_copies": 0}

    def note(t) -> None:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            ptr = t.untyped_storage().data_ptr()
            if ptr not in param_storages and ptr not in seen:
                seen[ptr] = (t.untyped_storage().nbytes(), tuple(t.shape) in param_shapes)

    def pack(t):
        note(t)
        return t

    real = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(fn, *args, **kwargs):
        for a in args:
            note(a)
        return real(fn, *args, **kwargs)

    saved = network.checkpoint, hf_modeling_utils.checkpoint
    network.checkpoint = hf_modeling_utils.checkpoint = counting_checkpoint
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield result
    finally:
        network.checkpoint, hf_modeling_utils.checkpoint = saved
        result["activations"] = sum(n for n, weight in seen.values() if not weight)
        result["weight_copies"] = sum(n for n, weight in seen.values() if weight)


def activation_bytes(config: KIVLAConfig, batch: TrainingBatch, checkpointing: bool) -> dict[str, int]:
    """Bytes kept for backward by one KI forward pass under bf16 autocast (CPU): count_saved_bytes."""
    torch.manual_seed(0)
    model = KIVLA(config)
    model.train()
    with count_saved_bytes(model) as counted, torch.autocast("cpu", dtype=torch.bfloat16):
        model.set_activation_checkpointing(checkpointing)  # inside: transformers binds checkpoint here
        loss = model.compute_loss(batch, "ki")["total"]
    del loss, model
    return counted


def in_fresh_process(fn, *args):
    """fn(*args) in a new process: each cut model (2-3 GB at π0.5 widths) gives its memory back."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=torch.set_num_threads,
                                                initargs=(torch.get_num_threads(),)) as pool:
        return pool.submit(fn, *args).result()


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Bytes per trainable and per frozen parameter of the real tensors after an optimizer step."""
    params = list({id(p): p for p in model.parameters()}.values())
    trainable = [p for p in params if p.requires_grad]
    frozen = [p for p in params if not p.requires_grad]
    t_bytes = sum(p.numel() * p.element_size() + (p.grad.numel() * p.grad.element_size() if p.grad is not None else 0)
                  + sum(v.numel() * v.element_size() for v in optimizer.state[p].values()
                        if isinstance(v, torch.Tensor) and v.dim() > 0) for p in trainable)
    f_bytes = sum(p.numel() * p.element_size() for p in frozen)
    return {"per_trainable": t_bytes / max(1, sum(p.numel() for p in trainable)),
            "per_frozen": f_bytes / max(1, sum(p.numel() for p in frozen)) if frozen else None}


def timed_steps(config: KIVLAConfig, batch: TrainingBatch, train_config: TrainConfig, runs: int,
                device: torch.device = torch.device("cpu")) -> dict:
    """Median seconds of forward + backward + clip + AdamW (1 warm-up), the state bytes, and on
    CUDA the peak allocated bytes."""
    torch.manual_seed(0)
    with torch.device(device):
        model = KIVLA(config)
    prepare_parameters(model, train_config)
    model.train()
    optimizer = make_optimizer(model, train_config)
    batch = batch.to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(runs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with amp:
            loss = model.compute_loss(batch, "ki")["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    out = {"step_s": statistics.median(times), "runs": runs, **state_bytes(model, optimizer)}
    if device.type == "cuda":
        out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


# ----------------------------------------------------------------------------- the plan
def extrapolated_activations(a11: int, a21: int, a12: int, full: KIVLAConfig) -> dict:
    """Per-sample activation bytes at full depth from cuts (vision, Gemma+expert) = (1,1), (2,1), (1,2)."""
    per_vision, per_layer = a21 - a11, a12 - a11
    base = a11 - per_vision - per_layer
    return {"base": base, "per_vision_layer": per_vision, "per_gemma_expert_layer": per_layer,
            "full": base + full.vision_depth * per_vision + full.depth * per_layer}


def plan_bytes(plan: dict, strategy: str, batch_size: int, gpus: int = 1) -> float:
    """Predicted bytes per GPU of `strategy` (a STRATEGY_ROWS name) at `batch_size` samples per GPU."""
    counts, state = plan["parameters"], plan["state_bytes_per_param"]
    ckpt = strategy.endswith("+ ckpt")
    act = plan["activation_bytes_per_sample"]["checkpointing" if ckpt else "none"]["full"]
    base = strategy.split(" ")[0]
    p, trainable = counts["total"], state["trainable"]
    # bf16 casts autocast keeps for backward (fsdp gathers bf16 weights instead): every weight, or with
    # checkpointing only those outside the layers
    copies = state["autocast_weight_copies_ckpt_bytes"] if ckpt else state["autocast_weight_copies"] * p
    if base == "full":
        fixed = trainable * p + copies
    elif base == "fsdp":
        working = (counts["root_group"] + 2 * counts["largest_layer"]) * (2 + 4)  # bf16 gathered + fp32 grads
        fixed = trainable * p / gpus + working
    else:  # LoRA: backbone frozen except adapters; expert trained in full
        fixed = state["frozen"] * (p - counts["expert"]) + trainable * (counts["expert"] + counts["lora_adapters"]) \
            + copies
    return fixed + act * batch_size


def largest_batch(plan: dict, strategy: str, gb_per_gpu: float, gpus: int) -> int:
    usable = gb_per_gpu * GB * (1 - RESERVE_FRACTION) - RESERVE_BYTES
    fixed = plan_bytes(plan, strategy, 0, gpus)
    act = plan_bytes(plan, strategy, 1, gpus) - fixed
    return max(0, math.floor((usable - fixed) / act))


def memory_plan(args) -> dict:
    full = KIVLAConfig.preset("pi05")
    counts = parameter_counts(full, args.lora_rank)
    batch = make_batch(cut_config(1, 1), 1, args.cameras, args.prompt_tokens, args.target_tokens)
    tokens = {"prefix": args.cameras * full.tokens_per_image + args.prompt_tokens, "targets": args.target_tokens,
              "actions": full.action_horizon}
    activations, weight_copies, weight_copies_ckpt = {}, None, None
    for name, ckpt in (("none", False), ("checkpointing", True)):
        measured = [in_fresh_process(activation_bytes, cut_config(v, d), batch, ckpt) for v, d in ((1, 1), (2, 1), (1, 2))]
        cuts = [m["activations"] for m in measured]
        activations[name] = {"measured_cuts": dict(zip(("v1_l1", "v2_l1", "v1_l2"), cuts)),
                             **extrapolated_activations(*cuts, full)}
        if not ckpt:  # every weight is cast and kept: bytes per parameter of the cut model
            weight_copies = measured[0]["weight_copies"] / parameter_counts(cut_config(1, 1), 0)["total"]
        else:  # only the weights outside the checkpointed layers (embedding / head, ...): bytes, any depth
            weight_copies_ckpt = measured[0]["weight_copies"]
        print(f"activations ({name}): cuts {[round(c / 1e6, 1) for c in cuts]} MB -> "
              f"{activations[name]['full'] / GB:.2f} GB per sample at full depth", flush=True)
    timing = {}
    # The step is timed with the vocabulary cut to 16k (the 257k-row embedding's AdamW state alone is
    # 6 GB): the cut model then fits a laptop; the per-layer work is the full model's.
    timing_config = dataclasses.replace(cut_config(1, 1), vocab_size=TIMING_VOCAB)
    timing_batch = make_batch(timing_config, 1, args.cameras, args.prompt_tokens, args.target_tokens)
    for name, options in (("full", {}), ("full + ckpt", {"activation_checkpointing": True}),
                          ("LoRA", {"lora_rank": args.lora_rank})):
        timing[name] = timed_steps(timing_config, timing_batch, TrainConfig(**options), args.timing_runs)
        print(f"step at the cut depth ({name}): {timing[name]['step_s']:.2f} s", flush=True)
    state = {"trainable": timing["full"]["per_trainable"], "frozen": timing["LoRA"]["per_frozen"],
             "autocast_weight_copies": weight_copies, "autocast_weight_copies_ckpt_bytes": weight_copies_ckpt}
    plan = {"parameters": counts, "tokens_per_sample": tokens, "state_bytes_per_param": state,
            "activation_bytes_per_sample": activations, "cut_step": timing}
    plan["largest_batch"] = {setup: {s: largest_batch(plan, s, gb, gpus) for s in STRATEGY_ROWS}
                             for setup, (gb, gpus) in SETUPS.items()}
    return plan


def print_plan(plan: dict) -> None:
    c, st, act = plan["parameters"], plan["state_bytes_per_param"], plan["activation_bytes_per_sample"]
    print(f"\nπ0.5: {c['total'] / 1e9:.2f} B parameters (vision {c['vision'] / 1e9:.2f} B, expert "
          f"{c['expert'] / 1e9:.3f} B, LoRA adapters {c['lora_adapters'] / 1e6:.1f} M); "
          f"tokens/sample {plan['tokens_per_sample']}")
    print(f"state: {st['trainable']:.1f} B per trained parameter, {st['frozen']:.1f} B per frozen parameter (measured)")
    print(f"activations per sample at full depth (bf16 autocast): {act['none']['full'] / GB:.2f} GB without, "
          f"{act['checkpointing']['full'] / GB:.2f} GB with checkpointing "
          f"(per Gemma+expert layer {act['none']['per_gemma_expert_layer'] / 1e6:.0f} / "
          f"{act['checkpointing']['per_gemma_expert_layer'] / 1e6:.0f} MB, per vision layer "
          f"{act['none']['per_vision_layer'] / 1e6:.0f} / {act['checkpointing']['per_vision_layer'] / 1e6:.0f} MB)")
    header = f"{'largest batch (global)':<24}" + "".join(f"{s:>14}" for s in STRATEGY_ROWS)
    print("\n" + header)
    for setup, (gb, gpus) in SETUPS.items():
        row = plan["largest_batch"][setup]
        cells = []
        for s in STRATEGY_ROWS:
            if s.startswith("fsdp") and gpus == 1:
                cells.append(f"{'n/a':>14}")
            else:
                cells.append(f"{row[s] * gpus:>14}")
        print(f"{setup:<24}" + "".join(cells))
    print(f"\n{'step at cut depth (1+1+1 layers, CPU fp32)':<44}" +
          "".join(f"{name}: {t['step_s']:.2f} s   " for name, t in plan["cut_step"].items()))


# ----------------------------------------------------------------------------- the GPU step
def one_ki_step(device: str | torch.device = "cuda", batch_size: int = 8, activation_checkpointing: bool = False,
                lora_rank: int = 0, runs: int = 3, cameras: int = 3, prompt_tokens: int = 200,
                target_tokens: int = 64, vision_depth: int | None = None, depth: int | None = None,
                vocab_size: int | None = None) -> dict:
    """Time full-size π0.5 KI training steps (bf16 autocast on CUDA, fp32 master weights, AdamW)
    -> {"step_s" (median of `runs` after a warm-up), "peak_allocated_bytes" (CUDA), "batch_size", ...}.
    vision_depth / depth / vocab_size cut the model (e.g. to try the function on CPU)."""
    device = torch.device(device)
    config = cut_config(vision_depth, depth)
    if vocab_size:
        config = dataclasses.replace(config, vocab_size=vocab_size)
    batch = make_batch(config, batch_size, cameras, prompt_tokens, target_tokens)
    train_config = TrainConfig(activation_checkpointing=activation_checkpointing, lora_rank=lora_rank)
    result = timed_steps(config, batch, train_config, runs, device)
    return {**result, "batch_size": batch_size, "activation_checkpointing": activation_checkpointing,
            "lora_rank": lora_rank, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cuda_step:
        result = one_ki_step(args.device, args.batch_size, args.activation_checkpointing)
        if args.plan:
            plan = json.loads(Path(args.plan).read_text())
            strategy = "full + ckpt" if args.activation_checkpointing else "full"
            result["plan_bytes"] = plan_bytes(plan, strategy, args.batch_size)
        print(json.dumps(result, indent=2))
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return
    start = time.perf_counter()
    plan = memory_plan(args)
    plan["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "seconds": time.perf_counter() - start}
    print_plan(plan)
    Path(args.out).write_text(json.dumps(plan, indent=2) + "\n")
    print(f"\nwrote {args.out} ({plan['machine']['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
