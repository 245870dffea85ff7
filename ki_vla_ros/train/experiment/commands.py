"""`ki-vla ki-claims` and `ki-vla make-demo-checkpoint` (registered by add_subcommands)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_subcommands(subparsers) -> None:
    claims = subparsers.add_parser("ki-claims", help="reproduce the KI paper's claims at small scale (CPU)")
    claims.add_argument("--quick", action="store_true", help="the few-minute size")
    claims.add_argument("--size", choices=("quick", "default", "long"), default="default")
    claims.add_argument("--out", default="ki_claims_out", help="directory for ki_claims.json and plots")
    claims.add_argument("--robot", default="single_arm")
    claims.set_defaults(func=lambda a: run_claims("quick" if a.quick else a.size, Path(a.out), robot=a.robot))

    demo = subparsers.add_parser("make-demo-checkpoint",
                                 help="train the tiny demo checkpoint (ki_vla_ros/assets/demo_checkpoint)")
    demo.add_argument("out", nargs="?", default=None, help="directory (default: the shipped asset path)")
    demo.add_argument("--robot", default="single_arm")
    demo.add_argument("--steps", type=int, default=None, help="VLA training steps (default: the shipped recipe's)")
    demo.set_defaults(func=lambda a: run_make_demo_checkpoint(
        Path(a.out) if a.out else None, robot=a.robot, steps=a.steps))


def run_claims(size: str, out_dir: Path, robot: str = "single_arm") -> int:
    from ki_vla_ros.train.experiment.study import format_table, run_study, write_outputs

    results = run_study(size, robot=robot)
    table = format_table(results)
    print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ki_claims.txt").write_text(table + "\n")
    for path in write_outputs(results, out_dir):
        print(f"[ki-claims] wrote {path}")
    return 0


def run_make_demo_checkpoint(out_dir: Path | None, robot: str = "single_arm", steps: int | None = None) -> int:
    from ki_vla_ros.train.experiment.demo_checkpoint import DEMO_CHECKPOINT_DIR, make_demo_checkpoint

    report = make_demo_checkpoint(out_dir or DEMO_CHECKPOINT_DIR, robot=robot, steps=steps)
    print(report)
    return 0


if __name__ == "__main__":  # python -m ki_vla_ros.train.experiment.commands ki-claims --quick
    parser = argparse.ArgumentParser(prog="ki-vla")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    raise SystemExit(args.func(args) or 0)
