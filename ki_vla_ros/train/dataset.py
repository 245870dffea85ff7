"""Training datasets on disk: one safetensors file per episode, plus JSON metadata.

Layout of a dataset directory DIR (format "ki_vla_dataset/1"):

    DIR/meta.json
        {"format": "ki_vla_dataset/1", "robot": name,
         "state_names": [...], "action_names": [...],     # vector layouts, robot units
         "cameras": [...],                                 # names, in model image-slot order
         "camera_slots": {name: slot},                     # optional; default: position in "cameras"
         "step_duration_s": float,                         # time between two frames
         "num_episodes": N,
         "episodes": [{"index": i, "length": T_i, "instruction": "...", ...extra JSON values}]}
    DIR/episodes/episode_000000.safetensors
        "images.<camera>"  uint8   [T, H, W, 3]  RGB, as recorded (any size; resized at sample time)
        "state"            float32 [T, Ds]       observation t, in state_names order
        "actions"          float32 [T, Da]       what the robot was told after observation t, in
                                                 action_names order: joint position targets reached
                                                 at (t + 1) * step_duration_s, base velocities
                                                 commanded from t * step_duration_s
    DIR/norm_stats.json    quantile stats of "state" and "actions" (compute_norm_stats; openpi layout)
    DIR/fast_tokenizer/    FAST tokenizer fitted on the dataset's normalized action chunks
    DIR/vlm.jsonl          optional VLM co-training samples about the same scenes, one per line:
        {"episode": i, "frame": t or null (any frame), "question": "...", "answer": "..."}

Every reader check raises `DatasetError` naming the file, the value and what was expected,
so a truncated episode file is reported before training starts, not at step 40 000.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ki_vla_ros.model.checkpoint import respect_umask
from ki_vla_ros.model.fast import FASTTokenizer
from ki_vla_ros.model.normalize import NormStats, load_norm_stats, normalize, save_norm_stats, to_delta

FORMAT = "ki_vla_dataset/1"
META_FILE = "meta.json"
EPISODES_DIR = "episodes"
NORM_STATS_FILE = "norm_stats.json"
FAST_DIR = "fast_tokenizer"
FAST_FIT_FILE = "fit.json"  # what the FAST tokenizer was fitted for (horizon, vocab size, action stats)
VLM_FILE = "vlm.jsonl"
_OPEN_FILES = 64  # episode files kept open (memory-mapped) at once
_FAST_FIT_CHUNKS = 20000  # FAST's BPE sees at most this many chunks (a seeded subsample)


class DatasetError(ValueError):
    """A dataset directory or file that cannot be used; the message names the file."""


def episode_file_name(index: int) -> str:
    return f"episode_{index:06d}.safetensors"


# ----------------------------------------------------------------------------- reading
class EpisodeDataset:
    """A dataset directory opened for reading (the layout is in the module docstring).

    Headers of every episode file are checked at `open`; states and actions are loaded on
    first use and kept (small); images are read frame by frame from memory-mapped files.
    """

    def __init__(self, root: Path, meta: dict):
        self.root = root
        self.meta = meta
        self.robot: str = meta["robot"]
        self.state_names: tuple[str, ...] = tuple(meta["state_names"])
        self.action_names: tuple[str, ...] = tuple(meta["action_names"])
        self.cameras: tuple[str, ...] = tuple(meta["cameras"])
        slots = meta.get("camera_slots") or {}
        self.camera_slots: dict[str, int] = {c: int(slots.get(c, i)) for i, c in enumerate(self.cameras)}
        self.step_duration_s = float(meta["step_duration_s"])
        self.episodes: list[dict] = list(meta["episodes"])
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._files: OrderedDict[int, Any] = OrderedDict()

    # ------------------------------------------------------------------ open
    @classmethod
    def open(cls, directory) -> "EpisodeDataset":
        root = Path(directory)
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise DatasetError(f"dataset {root} has no {META_FILE}; expected a directory written by "
                               f"`ki-vla convert` / `ki-vla make-sim-dataset` (format {FORMAT})")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{meta_path} is not valid JSON: {e}") from e
        _check_meta(meta, meta_path)
        dataset = cls(root, meta)
        for i in range(len(dataset)):
            dataset._check_header(i)
        return dataset

    def _path(self, i: int) -> Path:
        return self.root / EPISODES_DIR / episode_file_name(i)

    def _check_header(self, i: int) -> None:
        """Shapes and dtypes of episode i's tensors against meta.json, from the header only."""
        path, length = self._path(i), self.episodes[i]["length"]
        expected = {"state": ("F32", (length, len(self.state_names))),
                    "actions": ("F32", (length, len(self.action_names)))}
        expected.update({f"images.{c}": ("U8", None) for c in self.cameras})
        if not path.is_file():
            raise DatasetError(f"episode file {path} is missing; meta.json lists {len(self)} episodes")
        try:
            with safe_open(str(path), framework="numpy") as f:
                found = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise DatasetError(f"episode file {path} is not a readable safetensors file (corrupt or "
                               f"truncated?): {e}") from e
        missing = sorted(set(expected) - set(found))
        if missing:
            raise DatasetError(f"episode file {path} has no tensor(s) {missing}; it has {sorted(found)}")
        for key, (dtype, shape) in expected.items():
            got_dtype, got_shape = found[key]
            if shape is None:  # images: [T, H, W, 3]
                ok = len(got_shape) == 4 and got_shape[0] == length and got_shape[3] == 3 and min(got_shape) > 0
                shape_text = f"[{length}, H, W, 3]"
            else:
                ok, shape_text = got_shape == shape, str(list(shape))
            if not ok or got_dtype != dtype:
                raise DatasetError(f"episode file {path} tensor '{key}' is {got_dtype} {list(got_shape)}; "
                                   f"expected {dtype} {shape_text} (meta.json: length {length})")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(e["length"] for e in self.episodes)

    def lengths(self) -> np.ndarray:
        """int64 [N]: frames per episode."""
        return np.array([e["length"] for e in self.episodes], dtype=np.int64)

    def _index(self, i: int) -> int:
        if not 0 <= int(i) < len(self):
            raise IndexError(f"episode {i} is out of range; the dataset {self.root} has {len(self)} episodes")
        return int(i)

    def _file(self, i: int):
        """An open, memory-mapped episode file (the last _OPEN_FILES are kept open)."""
        if i in self._files:
            self._files.move_to_end(i)
            return self._files[i]
        path = self._path(i)
        try:
            handle = safe_open(str(path), framework="numpy")
        except (SafetensorError, OSError, ValueError) as e:
            raise DatasetError(f"episode file {path} is not a readable safetensors file: {e}") from e
        self._files[i] = handle
        if len(self._files) > _OPEN_FILES:
            self._files.popitem(last=False)
        return handle

    def _read(self, i: int, key: str, index=None) -> np.ndarray:
        path = self._path(i)
        try:
            f = self._file(i)
            return f.get_tensor(key) if index is None else f.get_slice(key)[index]
        except (SafetensorError, OSError, ValueError) as e:
            raise DatasetError(f"episode file {path} tensor '{key}' cannot be read (corrupt or "
                               f"truncated?): {e}") from e

    def state_actions(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Episode i's state float32 [T, Ds] and actions float32 [T, Da] (cached)."""
        i = self._index(i)
        if i not in self._arrays:
            state, actions = self._read(i, "state"), self._read(i, "actions")
            for key, arr in (("state", state), ("actions", actions)):
                bad = np.argwhere(~np.isfinite(arr))
                if bad.size:
                    t, d = bad[0]
                    raise DatasetError(f"episode file {self._path(i)} tensor '{key}'[{t}, {d}] is "
                                       f"{arr[t, d]}; expected finite values")
            self._arrays[i] = (state, actions)
        return self._arrays[i]

    def frame_images(self, i: int, t: int) -> dict[str, np.ndarray]:
        """Camera images of episode i at frame t: {camera: uint8 [H, W, 3]}."""
        i = self._index(i)
        length = self.episodes[i]["length"]
        if not 0 <= int(t) < length:
            raise IndexError(f"frame {t} is out of range; episode {i} has {length} frames")
        return {c: self._read(i, f"images.{c}", slice(int(t), int(t) + 1))[0] for c in self.cameras}

    def instruction(self, i: int) -> str:
        return self.episodes[self._index(i)]["instruction"]

    def episode(self, i: int) -> dict:
        """Episode i in full: images {camera: uint8 [T, H, W, 3]}, state, actions, plus its meta entry."""
        i = self._index(i)
        state, actions = self.state_actions(i)
        images = {c: self._read(i, f"images.{c}") for c in self.cameras}
        return {**self.episodes[i], "images": images, "state": state, "actions": actions}

    def chunks(self, horizon: int, delta_dims: Sequence[int] = ()) -> np.ndarray:
        """Every frame's action chunk, float32 [N_frames, horizon, Da] in robot units.

        The chunk of frame t is actions[t : t + horizon]; past the episode's end the last action
        repeats (the robot holds its final target), the same rule as the training sampler.
        delta_dims: those action dims as offsets from state[t] (KIVLAConfig.delta_action_dims).
        """
        if horizon <= 0:
            raise ValueError(f"horizon is {horizon}; expected a positive number of steps")
        out = []
        for i in range(len(self)):
            state, actions = self.state_actions(i)
            out.append(to_delta(action_chunks(actions, horizon), state, delta_dims))
        return np.concatenate(out, axis=0)

    def check_delta_dims(self, delta_dims: Sequence[int]) -> None:
        """Each delta action dim must name the same joint as the state dim it is an offset from."""
        for d in delta_dims:
            state = self.state_names[d] if d < len(self.state_names) else None
            action = self.action_names[d] if d < len(self.action_names) else None
            if state is None or state != action:
                raise DatasetError(f"the model predicts action dim {d} as an offset from state dim {d}, but dataset "
                                   f"{self.root} has action {action!r} and state {state!r} there; expected the same "
                                   f"joint (model config delta_action_dims)")

    def data_layout(self) -> dict:
        """What a checkpoint trained on this dataset records with its norm stats (`ki-vla check` reads it)."""
        return {"state_names": list(self.state_names), "action_names": list(self.action_names),
                "step_duration_s": self.step_duration_s}

    # ------------------------------------------------------------------ side files
    def norm_stats(self) -> dict[str, NormStats] | None:
        path = self.root / NORM_STATS_FILE
        if not path.is_file():
            return None
        stats = load_norm_stats(path, required=("state", "actions"))
        for key, names in (("state", self.state_names), ("actions", self.action_names)):
            if stats[key].dim != len(names):
                raise DatasetError(f"{path} '{key}' has {stats[key].dim} dims; the dataset has {len(names)} "
                                   f"({key} names in meta.json); delete it to recompute")
        return stats

    def fast_tokenizer(self) -> FASTTokenizer | None:
        path = self.root / FAST_DIR
        return FASTTokenizer.load(path) if path.is_dir() else None

    def vlm_samples(self) -> list[dict]:
        """Rows of vlm.jsonl ([] when there is none), checked against the episodes."""
        path = self.root / VLM_FILE
        if not path.is_file():
            return []
        rows = []
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path} line {line_no} is not valid JSON: {e}") from e
            rows.append(_check_vlm_row(row, self, f"{path} line {line_no}"))
        return rows

    def __repr__(self) -> str:
        return (f"EpisodeDataset({str(self.root)!r}, robot={self.robot!r}, episodes={len(self)}, "
                f"frames={self.num_frames}, cameras={list(self.cameras)})")

    # ------------------------------------------------------------------ writing
    @staticmethod
    def write(directory, episodes: Iterable[Mapping[str, Any]], meta: Mapping[str, Any], *,
              vlm_samples: Iterable[Mapping[str, Any]] | None = None, overwrite: bool = False) -> Path:
        """Write episodes (dicts with images {camera: [T,H,W,3]}, state, actions, instruction,
        optional extra JSON-able values) under `meta` (robot, state_names, action_names, cameras,
        step_duration_s, optional camera_slots). Streams: one episode in memory at a time."""
        root = Path(directory)
        if root.exists() and any(root.iterdir()):
            if not overwrite:
                raise DatasetError(f"output directory {root} is not empty; expected a new or empty directory")
            shutil.rmtree(root)
        (root / EPISODES_DIR).mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, **{k: v for k, v in meta.items() if k not in ("num_episodes", "episodes")}}
        meta["state_names"], meta["action_names"] = list(meta["state_names"]), list(meta["action_names"])
        meta["cameras"] = list(meta["cameras"])
        entries = []
        for i, ep in enumerate(episodes):
            tensors, entry = _episode_tensors(ep, i, meta)
            save_file(tensors, str(root / EPISODES_DIR / episode_file_name(i)))
            respect_umask(root / EPISODES_DIR / episode_file_name(i))
            entries.append(entry)
        if not entries:
            raise DatasetError(f"no episodes to write to {root}; expected at least one")
        meta.update(num_episodes=len(entries), episodes=entries)
        _check_meta(meta, root / META_FILE)
        if vlm_samples is not None:
            lines = []
            for n, row in enumerate(vlm_samples):
                row = _check_vlm_row(dict(row), None, f"vlm sample {n}", lengths=[e["length"] for e in entries])
                lines.append(json.dumps(row))
            (root / VLM_FILE).write_text("".join(line + "\n" for line in lines))
        (root / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")  # last: marks a complete dataset
        return root


def write_dataset(out_dir, episodes: Iterable[Mapping[str, Any]], *, robot: str, state_names: Sequence[str],
                  action_names: Sequence[str], cameras: Sequence[str], step_duration_s: float,
                  vlm_samples: Iterable[Mapping[str, Any]] | None = None,
                  camera_slots: Mapping[str, int] | None = None, overwrite: bool = False) -> Path:
    """Write a dataset directory (layout in the module docstring) and return its path."""
    meta = {"robot": robot, "state_names": list(state_names), "action_names": list(action_names),
            "cameras": list(cameras), "step_duration_s": float(step_duration_s)}
    if camera_slots is not None:
        meta["camera_slots"] = {str(k): int(v) for k, v in camera_slots.items()}
    return EpisodeDataset.write(out_dir, episodes, meta, vlm_samples=vlm_samples, overwrite=overwrite)


# ----------------------------------------------------------------------------- statistics
def action_chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """actions [T, Da] -> chunks [T, horizon, Da]: chunk t = actions[t : t + horizon], the last
    action repeated past the end of the episode."""
    t = np.arange(actions.shape[0])[:, None] + np.arange(horizon)[None, :]
    return actions[np.minimum(t, actions.shape[0] - 1)]


def compute_norm_stats(dataset: EpisodeDataset, save: bool = False, horizon: int = 1,
                       delta_dims: Sequence[int] = ()) -> dict[str, NormStats]:
    """Quantile stats of every frame's state and action: {"state": NormStats, "actions": NormStats}.

    delta_dims: action stats over every entry of every horizon-step chunk, those dims as offsets
    from the chunk's start state (what a model with delta_action_dims predicts).
    save=True also writes DIR/norm_stats.json (absolute actions only: the file is the dataset's).
    """
    if save and len(delta_dims):
        raise ValueError("save=True with delta_dims: DIR/norm_stats.json holds the absolute actions' stats")
    states, actions = zip(*(dataset.state_actions(i) for i in range(len(dataset))))
    if len(delta_dims):
        actions = dataset.chunks(horizon, delta_dims).reshape(-1, len(dataset.action_names))
    else:
        actions = np.concatenate(actions)
    stats = {"state": NormStats.from_data(np.concatenate(states)), "actions": NormStats.from_data(actions)}
    if save:
        save_norm_stats(dataset.root / NORM_STATS_FILE, stats, dataset.data_layout())
    return stats


def fit_fast_tokenizer(dataset: EpisodeDataset, horizon: int, vocab_size: int, *,
                       norm_stats: Mapping[str, NormStats] | None = None, scale: float = 10.0,
                       save: bool = False, seed: int = 0, delta_dims: Sequence[int] = ()) -> FASTTokenizer:
    """FAST fitted on the dataset's normalized action chunks [N, horizon, Da] (delta_dims as
    offsets from each chunk's start state).

    norm_stats: default the dataset's norm_stats.json, else computed. At most 20 000 chunks
    (a seeded subsample) train the BPE. save=True writes DIR/fast_tokenizer/.
    """
    if norm_stats is None and len(delta_dims):
        norm_stats = compute_norm_stats(dataset, horizon=horizon, delta_dims=delta_dims)
    stats = norm_stats or dataset.norm_stats() or compute_norm_stats(dataset)
    chunks = normalize(dataset.chunks(horizon, delta_dims), stats["actions"])
    if len(chunks) > _FAST_FIT_CHUNKS:
        chunks = chunks[np.sort(np.random.default_rng(seed).choice(len(chunks), _FAST_FIT_CHUNKS, replace=False))]
    tokenizer = FASTTokenizer.fit(chunks, vocab_size=vocab_size, scale=scale)
    if save:
        tokenizer.save(dataset.root / FAST_DIR)
    return tokenizer


def ensure_norm_stats(dataset: EpisodeDataset, horizon: int = 1, delta_dims: Sequence[int] = ()) -> dict[str, NormStats]:
    """DIR/norm_stats.json, computed and written first when missing. With delta_dims the
    stats of the offset chunks, computed each time (the file keeps the absolute ones)."""
    if len(delta_dims):
        return compute_norm_stats(dataset, horizon=horizon, delta_dims=delta_dims)
    return dataset.norm_stats() or compute_norm_stats(dataset, save=True)


def ensure_fast_tokenizer(dataset: EpisodeDataset, horizon: int, vocab_size: int, delta_dims: Sequence[int] = (),
                          norm_stats: Mapping[str, NormStats] | None = None) -> FASTTokenizer:
    """DIR/fast_tokenizer/ when it was fitted for this horizon, vocabulary size, delta dims and
    norm stats; otherwise fitted now (on the normalized chunks) and written there.
    norm_stats: the stats the chunks are normalized with (default: ensure_norm_stats's)."""
    stats = norm_stats or ensure_norm_stats(dataset, horizon, delta_dims)
    fit_path = dataset.root / FAST_DIR / FAST_FIT_FILE
    wanted = {"horizon": int(horizon), "vocab_size": int(vocab_size), "actions_q01": stats["actions"].q01.tolist(),
              "actions_q99": stats["actions"].q99.tolist()}
    if len(delta_dims):
        wanted["delta_action_dims"] = [int(d) for d in delta_dims]
    if fit_path.is_file():
        try:
            if json.loads(fit_path.read_text()) == wanted:
                return FASTTokenizer.load(dataset.root / FAST_DIR)
        except json.JSONDecodeError:
            pass  # refit below
    tokenizer = fit_fast_tokenizer(dataset, horizon, vocab_size, norm_stats=stats, save=True, delta_dims=delta_dims)
    fit_path.write_text(json.dumps(wanted) + "\n")
    return tokenizer


# ----------------------------------------------------------------------------- checks
def _check_meta(meta: Any, where: Path) -> None:
    if not isinstance(meta, dict):
        raise DatasetError(f"{where} holds a {type(meta).__name__}; expected a JSON object")
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{where} has format {meta.get('format')!r}; expected {FORMAT!r}")
    kinds = {"robot": str, "state_names": list, "action_names": list, "cameras": list,
             "step_duration_s": (int, float), "num_episodes": int, "episodes": list}
    for key, kind in kinds.items():
        if not isinstance(meta.get(key), kind):
            raise DatasetError(f"{where} key {key!r} is {meta.get(key)!r}; expected a "
                               f"{getattr(kind, '__name__', 'number')}")
    for key in ("state_names", "action_names", "cameras"):
        names = meta[key]
        if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise DatasetError(f"{where} {key!r} is {names}; expected a non-empty list of distinct names")
    if not meta["step_duration_s"] > 0:
        raise DatasetError(f"{where} step_duration_s is {meta['step_duration_s']}; expected > 0 seconds")
    slots = meta.get("camera_slots")
    if slots is not None and (not isinstance(slots, dict) or sorted(slots) != sorted(meta["cameras"])
                              or len(set(slots.values())) != len(slots)
                              or not all(isinstance(s, int) and s >= 0 for s in slots.values())):
        raise DatasetError(f"{where} camera_slots is {slots}; expected a distinct slot >= 0 for each of "
                           f"{meta['cameras']}")
    if meta["num_episodes"] != len(meta["episodes"]):
        raise DatasetError(f"{where} num_episodes is {meta['num_episodes']} but 'episodes' lists "
                           f"{len(meta['episodes'])}")
    for i, e in enumerate(meta["episodes"]):
        ok = (isinstance(e, dict) and e.get("index") == i and isinstance(e.get("length"), int)
              and e["length"] > 0 and isinstance(e.get("instruction"), str))
        if not ok:
            raise DatasetError(f"{where} episodes[{i}] is {e!r}; expected "
                               f"{{'index': {i}, 'length': T > 0, 'instruction': str, ...}}")


def _episode_tensors(ep: Mapping[str, Any], i: int, meta: Mapping[str, Any]) -> tuple[dict, dict]:
    """One episode dict -> (tensors for its safetensors file, its meta.json entry), validated."""
    where = f"episode {i}"
    for key in ("images", "state", "actions", "instruction"):
        if key not in ep:
            raise DatasetError(f"{where} has no {key!r}; expected images, state, actions and instruction")
    # C order: safetensors stores the raw buffer, so a column-major array would come back transposed
    state = np.ascontiguousarray(ep["state"], dtype=np.float32)
    actions = np.ascontiguousarray(ep["actions"], dtype=np.float32)
    length = state.shape[0] if state.ndim == 2 else 0
    for key, arr, names in (("state", state, meta["state_names"]), ("actions", actions, meta["action_names"])):
        if arr.shape != (length, len(names)) or length == 0:
            raise DatasetError(f"{where} {key} has shape {arr.shape}; expected [T > 0, {len(names)}] "
                               f"({key} names {list(names)}), T the same for state and actions")
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            raise DatasetError(f"{where} {key}[{bad[0][0]}, {bad[0][1]}] is {arr[tuple(bad[0])]}; "
                               f"expected finite values")
    images = ep["images"]
    if not isinstance(images, Mapping) or sorted(images) != sorted(meta["cameras"]):
        got = sorted(images) if isinstance(images, Mapping) else type(images).__name__
        raise DatasetError(f"{where} images has cameras {got}; expected {sorted(meta['cameras'])}")
    tensors = {"state": state, "actions": actions}
    for cam in meta["cameras"]:
        img = np.asarray(images[cam])
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[0] != length or img.shape[3] != 3:
            raise DatasetError(f"{where} camera '{cam}' images are {img.dtype} {list(img.shape)}; "
                               f"expected uint8 [{length}, H, W, 3] RGB")
        tensors[f"images.{cam}"] = np.ascontiguousarray(img)
    instruction = ep["instruction"]
    if not isinstance(instruction, str):
        raise DatasetError(f"{where} instruction is {instruction!r}; expected a string")
    entry = {"index": i, "length": int(length), "instruction": instruction}
    for key, value in ep.items():  # extra scalar facts (success, source bag, ...) ride along in meta
        if key not in ("images", "state", "actions", "instruction", "vqa") and _json_scalar(value):
            entry[key] = value.item() if isinstance(value, np.generic) else value
    return tensors, entry


def _json_scalar(value: Any) -> bool:
    if isinstance(value, (np.floating, float)):
        return math.isfinite(float(value))
    return isinstance(value, (str, bool, int, np.integer, np.bool_))


def _check_vlm_row(row: Any, dataset: EpisodeDataset | None, where: str,
                   lengths: Sequence[int] | None = None) -> dict:
    lengths = list(dataset.lengths()) if dataset is not None else list(lengths or [])
    ok = isinstance(row, dict) and isinstance(row.get("question"), str) and isinstance(row.get("answer"), str) \
        and isinstance(row.get("episode"), int) and 0 <= row["episode"] < len(lengths)
    if ok and row.get("frame") is not None:
        ok = isinstance(row["frame"], int) and 0 <= row["frame"] < lengths[row["episode"]]
    if not ok:
        raise DatasetError(f"{where} is {row!r}; expected {{'episode': 0..{len(lengths) - 1}, 'frame': a frame "
                           f"of that episode or null, 'question': str, 'answer': str}}")
    return {"episode": row["episode"], "frame": row.get("frame"), "question": row["question"],
            "answer": row["answer"]}
