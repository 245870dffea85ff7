"""The `ki-vla` subcommands for training data and training: convert, make-sim-dataset, train.

    ki-vla convert BAG [BAG ...] --config NAME OUT [--instruction TEXT] [--targets auto|commands|measured]
    ki-vla convert LEROBOT_DIR --config NAME --mapping MAP.yaml OUT      (a LeRobot v2.1 / v3.0 dataset)
    ki-vla export-lerobot DATASET OUT                                     (ours -> LeRobot v3.0)
    ki-vla make-sim-dataset --config NAME --episodes N OUT [--image-side PX] [--seed S]
    ki-vla train --data DIR --recipe ki --steps N --batch-size B --out DIR [--init tiny|CKPT] [--resume]
                 [--vlm-data DIR] [--vlm-ratio R] [--lr LR] ...
    torchrun --nproc_per_node G -m ki_vla_ros.cli train --strategy ddp|fsdp ...   (one process per GPU)
    ki-vla train ... --lora 16 --freeze vision --activation-checkpointing --grad-accum 4

torch is imported only by the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser(
        "convert", help="rosbag episodes -> a training dataset (one bag = one episode)",
        description="Replays each bag through the live node's synchronizer and writes the observations "
                    "with the commanded trajectory after each of them (else the next measured joint "
                    "state) as a dataset directory (format: ki_vla_ros/train/dataset.py).")
    convert.add_argument("bags", nargs="+", help="rosbag2 directories or .mcap / .db3 files, or one LeRobot "
                                                 "dataset directory (with meta/info.json; needs --mapping)")
    convert.add_argument("out", help="dataset directory to create")
    convert.add_argument("--config", required=True, help="robot config name or YAML path")
    convert.add_argument("--instruction", default=None,
                         help="instruction for every episode (default: the recorded /ki_vla/instruction, "
                              "else the config's default_instruction)")
    convert.add_argument("--targets", choices=("auto", "commands", "measured"), default="auto",
                         help="actions from recorded commands, measured joint states, or commands where "
                              "recorded (default)")
    convert.add_argument("--mapping", default=None,
                         help="LeRobot source: YAML naming the features of the config's state, actions and "
                              "cameras (ki_vla_ros/train/lerobot.py)")
    convert.add_argument("--skip-bad", action="store_true", help="skip bags that cannot be used (listed)")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    convert.set_defaults(func=_convert)

    export = subparsers.add_parser(
        "export-lerobot", help="a training dataset -> a LeRobot v3.0 dataset directory",
        description="Writes parquet frames, H.264 mp4 videos and meta/ (info.json, tasks, episodes, stats) in "
                    "LeRobot's v3.0 layout (ki_vla_ros/train/lerobot.py).")
    export.add_argument("data", help="dataset directory (ki-vla convert / make-sim-dataset)")
    export.add_argument("out", help="LeRobot dataset directory to create")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    export.set_defaults(func=_export_lerobot)

    sim = subparsers.add_parser(
        "make-sim-dataset", help="synthetic reach demonstrations with VQA co-training samples",
        description="Scripted expert demonstrations on the simulated robot (ki_vla_ros.sim): colored "
                    "blocks, an instruction naming one, the reach; plus questions and captions about "
                    "each scene in vlm.jsonl.")
    sim.add_argument("out", help="dataset directory to create")
    sim.add_argument("--config", required=True, help="robot config name or YAML path")
    sim.add_argument("--episodes", type=int, required=True, help="number of episodes")
    sim.add_argument("--seed", type=int, default=0, help="seed of the first episode (then seed+1, ...)")
    sim.add_argument("--image-side", type=int, default=96,
                     help="longest image side in pixels, aspect kept (default 96; 0 = the config's sizes)")
    sim.add_argument("--steps", type=int, default=None, help="steps per episode (default: 3 s worth)")
    sim.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    sim.set_defaults(func=_make_sim_dataset)

    train = subparsers.add_parser(
        "train", help="train / fine-tune with the knowledge-insulation recipe (or a baseline)",
        description="Fits norm stats and the FAST tokenizer on the data when missing, trains, and writes "
                    "checkpoints that Predictor.from_pretrained and the policy node load "
                    "(OUT/last, OUT/checkpoint_<step>) plus OUT/metrics.csv.")
    train.add_argument("--data", required=True, help="dataset directory (ki-vla convert / make-sim-dataset)")
    train.add_argument("--out", required=True, help="run directory (checkpoints, metrics.csv)")
    train.add_argument("--recipe", choices=("ki", "joint", "pi0", "fast"), default="ki",
                       help="ki: CE + flow with stop-gradient (default); joint: no stop-gradient; "
                            "pi0: flow only; fast: CE only")
    train.add_argument("--init", default="tiny",
                       help="'tiny' (random tiny model) or a checkpoint directory, e.g. π0.5 weights "
                            "(default tiny)")
    train.add_argument("--resume", action="store_true", help="continue OUT/last exactly where it stopped")
    train.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    train.add_argument("--batch-size", type=int, default=32, help="global batch size (default 32)")
    train.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    train.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps (default 100)")
    train.add_argument("--weight-decay", type=float, default=1e-10, help="AdamW weight decay (default 1e-10)")
    train.add_argument("--grad-clip-norm", type=float, default=1.0, help="gradient norm clip; 0 = off")
    train.add_argument("--vlm-data", default=None,
                       help="dataset with vlm.jsonl for co-training (default: --data's vlm.jsonl)")
    train.add_argument("--vlm-ratio", type=float, default=None,
                       help="fraction of each batch from VLM data (default: 0.25 when there is VLM data and "
                            "the recipe has a cross-entropy term, else 0)")
    train.add_argument("--flow-loss-weight", type=float, default=None,
                       help="alpha in ce + alpha * flow (default: the model config's, 1.0; under ki each "
                            "parameter learns from one term and AdamW ignores a constant loss scale, so alpha "
                            "only shifts the shared gradient-clipping norm; under joint it weighs the terms)")
    train.add_argument("--strategy", choices=("auto", "single", "ddp", "fsdp"), default="auto",
                       help="single process, DDP, or FSDP2 (sharded weights, gradients, AdamW state; needs "
                            "torchrun); auto = ddp under torchrun with 2+ processes, else single")
    train.add_argument("--activation-checkpointing", action="store_true",
                       help="recompute each layer's activations in backward (backbone, vision, expert): "
                            "less memory, ~1/3 more compute")
    train.add_argument("--grad-accum", type=int, default=1,
                       help="micro-batches per step; the step's batch and loss are those of --batch-size")
    train.add_argument("--lora", type=int, default=0, metavar="RANK",
                       help="LoRA adapters of this rank on the backbone's projections, rest of the backbone "
                            "frozen, expert trained in full (saved merged; default 0 = off)")
    train.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale alpha / rank (default alpha = rank)")
    train.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                       help="comma-separated projections of each Gemma layer to adapt (default: all seven)")
    train.add_argument("--freeze", action="append", default=[], choices=("vision",),
                       help="a part that takes no updates (vision = the SigLIP tower); repeatable")
    train.add_argument("--vision-lr-scale", type=float, default=1.0,
                       help="the vision tower's learning rate as a fraction of --lr (its own AdamW group); "
                            "0 freezes it like --freeze vision (default 1)")
    train.add_argument("--delta-actions", default=None,
                       help="action dims predicted as offsets from the state: 'joints' (every joint "
                            "position except joints named as grippers), 'none', or comma-separated action "
                            "names (default: the --init model's)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--log-every", type=int, default=10)
    train.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default: at the end)")
    train.add_argument("--keep-checkpoints", type=int, default=0, help="keep the newest N (default: all)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    train.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                       help="bf16 autocast: auto = on cuda only (default)")
    train.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)


def _convert(args: argparse.Namespace) -> int:
    from ki_vla_ros.eval.bag_io import BagError
    from ki_vla_ros.runtime.config import load_robot_config
    from ki_vla_ros.train.convert import convert_bags
    from ki_vla_ros.train.dataset import DatasetError

    config = load_robot_config(args.config)
    if len(args.bags) == 1 and (Path(args.bags[0]) / "meta" / "info.json").is_file():
        return _convert_lerobot(args, config)

    def report(summary) -> None:
        if summary.error:
            print(f"SKIPPED {summary.bag}: {summary.error}", file=sys.stderr)
            return
        print(f"{summary.bag}: {summary.frames} frames, {summary.duration_s:.1f} s, "
              f"{summary.instruction!r}, actions from {summary.action_sources}")
        for warning in summary.warnings:
            print(f"  warning: {warning}", file=sys.stderr)

    try:
        root, summaries = convert_bags(args.bags, config, args.out, instruction=args.instruction,
                                       targets=args.targets, skip_bad=args.skip_bad, overwrite=args.overwrite,
                                       on_bag=report)
    except (BagError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ok = [s for s in summaries if not s.error]
    print(json.dumps({"dataset": str(root), "episodes": len(ok), "frames": sum(s.frames for s in ok),
                      "skipped": len(summaries) - len(ok)}))
    return 0


def _convert_lerobot(args: argparse.Namespace, config) -> int:
    from ki_vla_ros.train.dataset import DatasetError, EpisodeDataset
    from ki_vla_ros.train.lerobot import LeRobotError, LeRobotMapping, convert_lerobot

    if not args.mapping:
        print(f"error: {args.bags[0]} is a LeRobot dataset; pass --mapping MAP.yaml naming the features of the "
              f"config's state, actions and cameras", file=sys.stderr)
        return 2
    try:
        root = convert_lerobot(args.bags[0], config, LeRobotMapping.load(args.mapping), args.out,
                               overwrite=args.overwrite)
    except (LeRobotError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dataset = EpisodeDataset.open(root)
    print(json.dumps({"dataset": str(root), "episodes": len(dataset), "frames": dataset.num_frames,
                      "skipped": 0}))
    return 0


def _export_lerobot(args: argparse.Namespace) -> int:
    from ki_vla_ros.train.dataset import DatasetError, EpisodeDataset
    from ki_vla_ros.train.lerobot import LeRobotError, export_lerobot

    try:
        dataset = EpisodeDataset.open(args.data)
        out = export_lerobot(dataset, args.out, overwrite=args.overwrite)
    except (LeRobotError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"lerobot_dataset": str(out), "episodes": len(dataset), "frames": dataset.num_frames}))
    return 0


def _make_sim_dataset(args: argparse.Namespace) -> int:
    from ki_vla_ros.runtime.config import load_robot_config
    from ki_vla_ros.train.dataset import DatasetError, EpisodeDataset
    from ki_vla_ros.train.sim_data import make_sim_dataset

    config = load_robot_config(args.config)
    try:
        root = make_sim_dataset(config, args.episodes, args.out, first_seed=args.seed,
                                image_side_px=args.image_side or None, steps=args.steps, overwrite=args.overwrite)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dataset = EpisodeDataset.open(root)
    success = sum(bool(e.get("success")) for e in dataset.episodes)
    print(json.dumps({"dataset": str(root), "episodes": len(dataset), "frames": dataset.num_frames,
                      "expert_success": success, "vlm_samples": len(dataset.vlm_samples())}))
    return 0


def _train(args: argparse.Namespace) -> int:
    import torch

    from ki_vla_ros.train.dataset import DatasetError
    from ki_vla_ros.train.trainer import TrainConfig, train
    from ki_vla_ros.train.prepare import prepare_run

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        config = TrainConfig(
            recipe=args.recipe, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, grad_clip_norm=args.grad_clip_norm,
            vlm_ratio=args.vlm_ratio, seed=args.seed, log_every=args.log_every, save_every=args.save_every,
            keep_checkpoints=args.keep_checkpoints, out_dir=args.out, device=args.device, amp=args.amp,
            flow_loss_weight=args.flow_loss_weight, resume=args.resume, progress=not args.no_progress,
            strategy=args.strategy, activation_checkpointing=args.activation_checkpointing, grad_accum=args.grad_accum,
            lora_rank=args.lora, lora_alpha=args.lora_alpha,
            lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
            freeze=tuple(args.freeze), init=args.init, delta_actions=args.delta_actions,
            vision_lr_scale=args.vision_lr_scale)
        run = prepare_run(args.data, config, vlm_data=args.vlm_data)
        history = train(run.model, config, run.action_sampler, run.vlm_sampler)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if run.context.is_main:
        last = history[-1] if history else {}
        print(json.dumps({"checkpoint": str(Path(args.out) / "last"), "step": last.get("step"),
                          "ce": last.get("ce"), "flow": last.get("flow"),
                          "metrics": str(Path(args.out) / "metrics.csv")}))
    return 0
