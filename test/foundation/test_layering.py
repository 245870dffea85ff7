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


def test_the_package_never_imports_the_research_harness():
    """experiments/ is not installed with the package, so nothing in ki_vla_ros/ may need it."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1 and words[1].split(".")[0] == "experiments":
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, offenders
    assert not (PACKAGE / "train" / "experiment").exists()
