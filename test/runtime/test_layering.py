"""runtime/ is ROS-free and model-free: the replay evaluator runs it without DDS or torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "ki_vla_ros" / "runtime"


def test_runtime_modules_import_neither_rclpy_nor_torch():
    modules = sorted(f"ki_vla_ros.runtime.{p.stem}" for p in RUNTIME.glob("*.py") if p.stem != "__init__")
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'torch'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=RUNTIME.parents[1], check=True)
    assert out.stdout.strip() == "", f"runtime imported {out.stdout.strip()}"
