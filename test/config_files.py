"""Robot configs changed for one test: a shipped YAML, edited, written to the test's directory."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml

from ki_vla_ros.runtime.config import SOURCE_CONFIG_DIR


def config_file(tmp_path: Path, name: str, change: Callable[[dict], None] | None = None,
                filename: str | None = None) -> Path:
    """config/<name>.yaml with change(document) applied, written to tmp_path; returns its path."""
    document = yaml.safe_load((SOURCE_CONFIG_DIR / f"{name}.yaml").read_text())
    if change is not None:
        change(document)
    path = tmp_path / (filename or f"{name}_modified.yaml")
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
