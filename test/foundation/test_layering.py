"""Imports only go down the layers (DESIGN.md section 2).

model/ never imports rclpy; runtime/ and sim/ import neither rclpy nor torch, so the
replay evaluator, training data generation and the control logic run without DDS, and
runtime/ without a model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ki_vla_ros"


@pytest.mark.parametrize("layer, forbidden", [
    ("model", ("rclpy",)),
    ("runtime", ("rclpy", "torch")),
    ("sim", ("rclpy", "torch")),
])
def test_layer_modules_do_not_import_the_layers_above(layer, forbidden):
    modules = sorted(f"ki_vla_ros.{layer}.{p.stem}" for p in (PACKAGE / layer).glob("*.py") if p.stem != "__init__")
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "", f"{layer}/ imported {out.stdout.strip()}"
