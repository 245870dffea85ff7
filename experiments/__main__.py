"""python -m experiments ki-claims [--quick | --size default|long] [--out DIR]
python -m experiments make-demo-checkpoint DIR [recipe options]   (--help lists them)

Run from the repository root (experiments/ is not part of the installed package)."""

from __future__ import annotations

import argparse
import sys

from experiments.commands import add_subcommands


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
