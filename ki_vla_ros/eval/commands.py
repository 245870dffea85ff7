"""The `ki-vla` subcommands for bags and checkpoints: eval-bag, record, play, check.

    ki-vla eval-bag BAG [BAG ...] --config NAME --checkpoint DIR|tiny --out DIR [--latency-aware]
    ki-vla record --config NAME OUT [--storage mcap|sqlite3] [--duration S]
    ki-vla play BAG [--rate R] [--clock] [--loop]
    ki-vla check --config NAME --checkpoint DIR [--bag BAG] [--json FILE]

rclpy and torch are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import json


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "eval-bag", help="open-loop evaluation of a checkpoint on recorded bags",
        description="Replays each bag through the live node's synchronizer and preprocessing, runs "
                    "the policy on every observation and compares its chunks with what was recorded "
                    "afterwards. Writes report.json, summary.md and PNG plots to --out.")
    evaluate.add_argument("bags", nargs="+", help="rosbag2 directories or .mcap / .db3 files")
    evaluate.add_argument("--config", required=True, help="robot config name or YAML path")
    evaluate.add_argument("--checkpoint", default=None,
                          help="checkpoint directory, or 'tiny' for random tiny weights "
                               "(default: the config's model.checkpoint)")
    evaluate.add_argument("--out", required=True, help="report directory (created)")
    evaluate.add_argument("--latency-aware", action="store_true",
                          help="compare only the steps the robot would still execute after the latency")
    evaluate.add_argument("--latency-s", type=float, default=None,
                          help="inference latency to assume instead of the measured one (s)")
    evaluate.add_argument("--every-s", type=float, default=None,
                          help="use an observation at most this often (default: execute_steps * "
                               "step_duration_s; 0 = every synchronized observation)")
    evaluate.add_argument("--targets", choices=("auto", "commands", "measured"), default="auto",
                          help="compare with recorded commands, measured joint states, or commands "
                               "where recorded (default)")
    evaluate.add_argument("--instruction", default=None,
                          help="prompt for every observation (default: as recorded, else the config's)")
    evaluate.add_argument("--device", default=None, help="torch device (default: the config's)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the flow-matching noise")
    evaluate.add_argument("--torch-threads", type=int, default=0,
                          help="torch CPU threads (default 0 = auto: a quarter of the cores, at least 1)")
    evaluate.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    evaluate.set_defaults(func=_eval_bag)

    record = subparsers.add_parser("record", help="record the configured topics into a bag",
                                   description="Records cameras, joint states, odometry, commands and "
                                               "action chunks with exact CDR bytes until Ctrl-C.")
    add_record_arguments(record)
    record.set_defaults(func=_record)

    play = subparsers.add_parser("play", help="republish a bag with its original timing")
    add_play_arguments(play)
    play.set_defaults(func=_play)

    check = subparsers.add_parser(
        "check", help="preflight: does a checkpoint fit a robot config (and a recording)?",
        description="Compares the robot config with the checkpoint (dims and names of the norm stats, delta "
                    "dims, joint limits, image slots and size, tokenizer, horizon, step) and, with --bag, with "
                    "a recording (states, cameras alive, distinct, not swapped). Prints one line per check; "
                    "exits 1 when a check FAILs (ki_vla_ros/eval/preflight.py).")
    check.add_argument("--config", required=True, help="robot config name or YAML path")
    check.add_argument("--checkpoint", required=True, help="checkpoint directory ('demo': the shipped one)")
    check.add_argument("--bag", default=None, help="a rosbag recorded on the robot (optional)")
    check.add_argument("--json", default=None, help="also write the results as JSON here")
    check.set_defaults(func=_check)


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="bag directory to create (must not exist)")
    parser.add_argument("--config", required=True, help="robot config name or YAML path")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                        help="rosbag2 storage format (default mcap)")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C / SIGTERM)")


def add_play_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 directory, or a .mcap / .db3 file")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    parser.add_argument("--clock", action="store_true", help="publish /clock with the bag time")
    parser.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate between messages")
    parser.add_argument("--loop", action="store_true", help="start over at the end until stopped")
    parser.add_argument("--topics", nargs="+", default=None, help="play only these topics")
    parser.add_argument("--wait-for-subscribers", type=float, default=None, metavar="SECONDS",
                        help="wait up to SECONDS for a subscriber on every played topic first")


def _eval_bag(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ki_vla_ros.eval.bag_io import BagError
    from ki_vla_ros.eval.run import evaluate_bags, load_policy
    from ki_vla_ros.runtime.config import load_robot_config

    missing = [bag for bag in args.bags if not Path(bag).exists()]
    if missing:  # before loading anything, and no report of bags that were never there
        raise BagError(", ".join(missing), "no such file or directory; expected rosbag2 directories or .mcap / "
                                           ".db3 files; nothing evaluated, no report written")
    config = load_robot_config(args.config)
    checkpoint = args.checkpoint or config.model.checkpoint
    policy = load_policy(config, checkpoint, device=args.device, torch_threads=args.torch_threads)
    report = evaluate_bags(args.bags, config, policy, args.out, latency_aware=args.latency_aware,
                           latency_s=args.latency_s, every_s=args.every_s, instruction=args.instruction,
                           targets=args.targets, seed=args.seed, plots=not args.no_plots,
                           policy_label=f"checkpoint {checkpoint}")
    overall, moving, totals = report["overall"], report["overall_moving"], report["totals"]
    print(json.dumps({"bags_ok": totals["bags_ok"], "bags_failed": totals["bags_failed"],
                      "windows": totals["windows"], "mae_normalized_moving": moving["mae_normalized"],
                      "moving_dims": len(moving["dims"]), "still_dims": moving["still_dims"],
                      "mae_normalized_all": overall["mae_normalized"],
                      "rmse_normalized": overall["rmse_normalized"],
                      "inference_ms_p50": report["latency"]["inference_ms"]["p50"],
                      "observations_per_s": totals["observations_per_s"], "report": args.out}))
    return 1 if report["failed_bags"] else 0


def _record(args: argparse.Namespace) -> int:
    from ki_vla_ros.ros.recorder import main_from_args

    return main_from_args(args)


def _play(args: argparse.Namespace) -> int:
    from ki_vla_ros.ros.player import main_from_args

    return main_from_args(args)


def _check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ki_vla_ros.eval.preflight import checks_failed, format_table, results_json, run_checks
    from ki_vla_ros.runtime.config import load_robot_config
    from ki_vla_ros.runtime.model_loading import DEMO, DEMO_CHECKPOINT_DIR

    config = load_robot_config(args.config)
    checkpoint = DEMO_CHECKPOINT_DIR if args.checkpoint == DEMO else args.checkpoint
    results = run_checks(config, checkpoint, args.bag)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(results_json(results) + "\n")
    failed = checks_failed(results)
    print(f"{sum(r.status == 'FAIL' for r in results)} FAIL, {sum(r.status == 'WARN' for r in results)} WARN, "
          f"{sum(r.status == 'PASS' for r in results)} PASS")
    return 1 if failed else 0
