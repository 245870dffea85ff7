#!/usr/bin/env python3
"""The KI paper's claims at small scale (Driess et al., 2025, arXiv 2505.23705), on a 2-core CPU.

Pretrains a tiny backbone on VQA/captions about simulated table scenes, trains the VLA with
each recipe (ki, joint, pi0, fast) over several seeds on the language-conditioned reach task,
and prints a table (mean ± std over seeds): steps to a target action error, VQA accuracy
after VLA training, closed-loop success at reaching the named block in SimRobot, and
inference latency flow expert vs autoregressive FAST. Writes JSON (+ PNG plots when
matplotlib is installed). See ki_vla_ros/train/experiment/study.py.

    python benchmarks/ki_claims.py                 # default size (<= 30 min on 2 CPU cores)
    python benchmarks/ki_claims.py --quick         # a few minutes, 2 seeds, few steps
    python benchmarks/ki_claims.py --size long     # 4000 VLA steps per run: hours on a CPU
    python benchmarks/ki_claims.py --make-demo-checkpoint ki_vla_ros/assets/demo_checkpoint
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ki_vla_ros.train.experiment.commands import (add_demo_checkpoint_options, demo_checkpoint_kwargs, run_claims,
                                                 run_make_demo_checkpoint)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the few-minute size (2 seeds, few steps)")
    parser.add_argument("--size", choices=("quick", "default", "long"), default="default",
                        help="study size (default: <= 30 min on 2 CPU cores; long: 4000 steps, hours)")
    parser.add_argument("--out", default="ki_claims_out", help="directory for ki_claims.json and plots")
    parser.add_argument("--robot", default="single_arm", help="robot config of the task (default single_arm)")
    parser.add_argument("--make-demo-checkpoint", metavar="DIR", default=None,
                        help="instead of the study: train and write the shipped demo checkpoint to DIR")
    add_demo_checkpoint_options(parser.add_argument_group("demo checkpoint (with --make-demo-checkpoint)"))
    args = parser.parse_args(argv)
    if args.make_demo_checkpoint:
        return run_make_demo_checkpoint(Path(args.make_demo_checkpoint), robot=args.robot,
                                        **demo_checkpoint_kwargs(args))
    return run_claims("quick" if args.quick else args.size, Path(args.out), robot=args.robot)


if __name__ == "__main__":
    sys.exit(main())
