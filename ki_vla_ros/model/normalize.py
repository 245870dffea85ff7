"""Quantile normalization of states and actions (π0.5).

    normalize(x)   = (x - q01) / (q99 - q01 + 1e-6) * 2 - 1     # 1st..99th percentile -> [-1, 1]
    unnormalize(y) = (y + 1) / 2 * (q99 - q01 + 1e-6) + q01    # exact inverse

Quantiles rather than mean/std keep rare outliers (a gripper slamming shut, a dropped
frame) from squeezing the useful range; mean and std are stored too, for reporting.
Stats are saved next to the checkpoint in openpi's norm_stats.json layout:
{"norm_stats": {"state": {"mean": [...], "std": [...], "q01": [...], "q99": [...]}, "actions": {...}}},
plus, when known, the layout of the data they were computed on (ours only; openpi and LeRobot
files have none): "data_layout": {"state_names": [...], "action_names": [...], "step_duration_s": s}.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .json_files import read_json

EPS = 1e-6
_FIELDS = ("q01", "q99", "mean", "std")


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-dimension statistics, each a float32 array [D]."""

    q01: np.ndarray
    q99: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self):
        arrays = {name: np.asarray(getattr(self, name), dtype=np.float32) for name in _FIELDS}
        for name, a in arrays.items():
            if a.ndim != 1:
                raise ValueError(f"NormStats.{name} has shape {a.shape}; expected a 1-D [D] array")
            if not np.isfinite(a).all():
                raise ValueError(f"NormStats.{name} contains NaN or inf: {a.tolist()}")
            object.__setattr__(self, name, a)
        dims = {name: a.shape[0] for name, a in arrays.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"NormStats fields have different lengths {dims}; expected one length D")

    @property
    def dim(self) -> int:
        return self.q01.shape[0]

    @classmethod
    def from_data(cls, x: np.ndarray) -> "NormStats":
        """Statistics of samples x [N, D] (e.g. every state or action of a dataset)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"data has shape {x.shape}; expected a non-empty [N, D] array")
        if not np.isfinite(x).all():
            n, d = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"data[{n}, {d}] is {x[n, d]}; expected finite values")
        q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
        return cls(q01=q01, q99=q99, mean=x.mean(axis=0), std=x.std(axis=0))

    @classmethod
    def identity(cls, dim: int) -> "NormStats":
        """Stats that leave values already in [-1, 1] (almost) unchanged."""
        return cls(q01=-np.ones(dim), q99=np.ones(dim), mean=np.zeros(dim), std=np.ones(dim))

    def to_dict(self) -> dict[str, list[float]]:
        return {name: getattr(self, name).tolist() for name in _FIELDS}

    @classmethod
    def from_dict(cls, d: dict, where: str = "norm stats") -> "NormStats":
        """Inverse of to_dict; `where` names the source in errors (file and key)."""
        if not isinstance(d, dict):
            raise ValueError(f"{where} is {type(d).__name__}; expected an object with keys {list(_FIELDS)}")
        missing = [name for name in _FIELDS if name not in d]
        if missing:
            raise ValueError(f"{where} is missing key(s) {missing}; expected keys {list(_FIELDS)}")
        try:
            return cls(**{name: np.asarray(d[name], dtype=np.float32) for name in _FIELDS})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e


def _check_last_dim(x: np.ndarray, stats: NormStats, what: str) -> None:
    if x.ndim == 0 or x.shape[-1] != stats.dim:
        raise ValueError(f"{what} has shape {x.shape}; norm stats have shape ({stats.dim},), expected [..., {stats.dim}]")


def normalize(x: np.ndarray, stats: NormStats, clip: bool = False) -> np.ndarray:
    """x [..., D] -> float32 [..., D], q01 -> -1 and q99 -> +1; clip=True clamps to [-1, 1]."""
    x = np.asarray(x, dtype=np.float32)
    _check_last_dim(x, stats, "input")
    y = (x - stats.q01) / (stats.q99 - stats.q01 + EPS) * 2.0 - 1.0
    return np.clip(y, -1.0, 1.0) if clip else y


def unnormalize(y: np.ndarray, stats: NormStats, clip: bool = False) -> np.ndarray:
    """Inverse of normalize: y [..., D] -> float32 [..., D]; clip=True first clamps y to [-1, 1],
    which keeps commands inside the 1st..99th percentile range seen in the data."""
    y = np.asarray(y, dtype=np.float32)
    _check_last_dim(y, stats, "input")
    if clip:
        y = np.clip(y, -1.0, 1.0)
    return (y + 1.0) / 2.0 * (stats.q99 - stats.q01 + EPS) + stats.q01


def save_norm_stats(path, stats: dict[str, NormStats], data_layout: dict | None = None) -> None:
    """Write {key: NormStats} (keys like "state", "actions") as openpi-style norm_stats.json.

    data_layout: {"state_names", "action_names", "step_duration_s"} of the data the stats
    describe, so `ki-vla check` can compare names and step with a robot config."""
    payload: dict = {"norm_stats": {key: s.to_dict() for key, s in stats.items()}}
    if data_layout:
        payload["data_layout"] = data_layout
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def load_data_layout(path) -> dict | None:
    """The "data_layout" entry of a norm_stats.json (None when the file or the entry is absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    raw = read_json(path, "norm stats file")
    layout = raw.get("data_layout") if isinstance(raw, dict) else None
    return layout if isinstance(layout, dict) else None


def load_norm_stats(path, required: tuple[str, ...] = ()) -> dict[str, NormStats]:
    """Read norm_stats.json (openpi layout, or the bare {key: stats} mapping).

    `required` names keys that must be present (e.g. ("state", "actions")).
    """
    path = Path(path)
    raw = read_json(path, "norm stats file")
    if isinstance(raw, dict) and "norm_stats" in raw:
        raw = raw["norm_stats"]
    if not isinstance(raw, dict):
        raise ValueError(f"norm stats file {path} holds a {type(raw).__name__}; expected an object of named stats")
    missing = [key for key in required if key not in raw]
    if missing:
        raise ValueError(f"norm stats file {path} has no key(s) {missing}; it has {sorted(raw)}")
    return {key: NormStats.from_dict(d, where=f"norm stats file {path} key {key!r}") for key, d in raw.items()}


def to_delta(chunks: np.ndarray, state: np.ndarray, dims) -> np.ndarray:
    """Action chunks [..., H, Da] -> the same with dims as offsets from state [..., Ds] (the
    state at each chunk's start; action dim d pairs with state dim d)."""
    return _shift_dims(chunks, state, dims, -1.0)


def to_absolute(chunks: np.ndarray, state: np.ndarray, dims) -> np.ndarray:
    """The inverse of to_delta: add the chunk's start state back to dims."""
    return _shift_dims(chunks, state, dims, 1.0)


def _shift_dims(chunks: np.ndarray, state: np.ndarray, dims, sign: float) -> np.ndarray:
    out = np.array(chunks, dtype=np.float32)
    if len(dims):
        dims = list(dims)
        out[..., dims] += sign * np.asarray(state, dtype=np.float32)[..., None, dims]
    return out
