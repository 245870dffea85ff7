"""sim/ is ROS-free and model-free: training and evaluation use it without DDS or torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SIM = Path(__file__).resolve().parents[2] / "ki_vla_ros" / "sim"


def test_sim_modules_import_neither_rclpy_nor_torch():
    modules = sorted(f"ki_vla_ros.sim.{p.stem}" for p in SIM.glob("*.py") if p.stem != "__init__")
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'torch'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=SIM.parents[1], check=True)
    assert out.stdout.strip() == "", f"sim imported {out.stdout.strip()}"
