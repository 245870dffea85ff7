"""Reading the JSON files that sit next to a checkpoint (config, norm stats, tokenizers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, what: str, missing_hint: str = "") -> Any:
    """Parse `path`; errors name `what` ("model config", "norm stats file"...) and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found" + (f"; {missing_hint}" if missing_hint else ""))
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e
