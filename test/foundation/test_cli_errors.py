"""`ki-vla` on bad input: one line naming the input and what was expected, no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _ki_vla(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_bringup_of_a_misspelt_config_prints_the_reason_without_a_traceback():
    run = _ki_vla("bringup", "single_arn")
    assert run.returncode == 2
    assert "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("ki-vla bringup: error: single_arn: "), run.stderr
    assert "'single_arm'" in run.stderr and run.stderr.count("\n") == 1


def test_make_demo_checkpoint_requires_an_output_directory():
    """It used to write over the shipped asset inside the package when none was given."""
    run = subprocess.run([sys.executable, "-m", "experiments", "make-demo-checkpoint", "--steps", "1"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 2
    assert "the following arguments are required: out" in run.stderr
