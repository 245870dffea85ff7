"""The `ki-vla` command: one entry point for the demo, bring-up, evaluation and training."""
from __future__ import annotations

import argparse
import os
import sys


def _ros_defaults() -> None:
    """Loopback-only discovery, and the venv as ament prefix when none is set."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if "AMENT_PREFIX_PATH" not in os.environ and os.path.isdir(
        os.path.join(sys.prefix, "share", "ament_index")
    ):
        os.environ["AMENT_PREFIX_PATH"] = sys.prefix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ki-vla", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the demo graph for a fixed time and print a summary")
    demo.add_argument("--config", default="single_arm",
                      help="robot config: single_arm, bimanual, mobile or a YAML path (default single_arm)")
    demo.add_argument("--duration", type=float, default=20.0,
                      help="seconds to run after the first chunk arrives (default 20)")
    demo.add_argument("--checkpoint", default="",
                      help="model checkpoint directory or 'tiny' (default: the config's model.checkpoint)")
    demo.add_argument("--summary-json", default=None, help="also write the summary as JSON here")
    demo.add_argument("--domain-id", type=int, default=None,
                      help="ROS_DOMAIN_ID for the demo processes (default: a random free-looking id)")
    demo.set_defaults(func=_run_demo)

    bringup = sub.add_parser("bringup", help="start the graph of a robot config (the launch files' nodes)")
    bringup.add_argument("config", help="single_arm, bimanual, mobile or a YAML path")
    bringup.add_argument("--sim", action="store_true", help="also start sim_robot (no real robot)")
    bringup.add_argument("--checkpoint", default="", help="model checkpoint directory or 'tiny'")
    bringup.add_argument("--use-sim-time", action="store_true",
                         help="nodes follow /clock (with `ki-vla play BAG --clock`)")
    bringup.set_defaults(func=_run_bringup)

    from ki_vla_ros.eval.commands import add_subcommands

    add_subcommands(sub)  # eval-bag, record, play, check
    from ki_vla_ros.train.commands import add_subcommands as add_train_subcommands

    add_train_subcommands(sub)  # convert, export-lerobot, make-sim-dataset, train
    from ki_vla_ros.serve.commands import add_subcommands as add_serve_subcommands

    add_serve_subcommands(sub)  # serve
    return parser


def _run_demo(args) -> int:
    from ki_vla_ros.ros.demo import run_demo

    return run_demo(duration_s=args.duration, summary_json=args.summary_json, domain_id=args.domain_id,
                    config_name=args.config, checkpoint=args.checkpoint)


def _run_bringup(args) -> int:
    from ki_vla_ros.ros.bringup import run_bringup

    return run_bringup(args.config, sim=args.sim, checkpoint=args.checkpoint, use_sim_time=args.use_sim_time)


# Errors about the user's input (a config, a bag, a checkpoint, a dataset) whose message says
# everything: printed as one line, without a traceback. module -> exception class name.
USER_ERRORS = {"ki_vla_ros.runtime.config": "ConfigError", "ki_vla_ros.eval.bag_io": "BagError",
               "ki_vla_ros.model.checkpoint": "CheckpointError", "ki_vla_ros.train.dataset": "DatasetError"}
USER_ERROR_EXIT = 2


def _user_error_types() -> tuple[type, ...]:
    """The USER_ERRORS classes of the modules this run imported (no other module can have raised one)."""
    return tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS.items() if module in sys.modules)


def main(argv: list[str] | None = None) -> int:
    _ros_defaults()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as error:
        if not isinstance(error, _user_error_types()):
            raise
        print(f"ki-vla {args.command}: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
