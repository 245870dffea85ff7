"""LeRobot dataset directories <-> our training datasets (train/dataset.py).

Read: a local LeRobot dataset, codebase_version v2.1 or v3.0, becomes episode dicts for
`write_dataset` (so `ki-vla convert LEROBOT_DIR OUT --mapping MAP.yaml` works like a bag).
Write: `export_lerobot` writes one of our datasets as a LeRobot v3.0 dataset.

Written with pyarrow (parquet) and PyAV (mp4), not with the `lerobot` package: lerobot 0.5+
needs Python >= 3.12 and 0.4.4 pins torch < 2.11 (pip would replace the pinned torch 2.13 CPU
with torch 2.10 and pull ~15 nvidia CUDA wheels). The layout follows LeRobot's own code
(huggingface/lerobot, src/lerobot/datasets/utils.py, dataset_metadata.py, docs
lerobot-dataset-v3.mdx; scripts/convert_dataset_v21_to_v30.py for v2.1):

    v3.0  meta/info.json                      codebase_version, fps, features, data_path, video_path
          meta/tasks.parquet                  task (the pandas index) | task_index
          meta/episodes/chunk-000/file-000.parquet
                episode_index, tasks, length, dataset_from_index, dataset_to_index,
                data/chunk_index, data/file_index, videos/<key>/{chunk_index, file_index,
                from_timestamp, to_timestamp}, meta/episodes/{chunk_index, file_index}
          meta/stats.json                     mean/std/min/max/count/q01/q99 of state and action
          data/chunk-000/file-000.parquet     one row per frame, many episodes per file
          videos/<key>/chunk-000/file-000.mp4 many episodes per file; an episode starts at its
                                              from_timestamp
    v2.1  meta/info.json, meta/tasks.jsonl {"task_index", "task"},
          meta/episodes.jsonl {"episode_index", "tasks", "length"},
          data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet,
          videos/chunk-{episode_chunk:03d}/<key>/episode_{episode_index:06d}.mp4 (from 0 s)

The mapping file (YAML) says which LeRobot features are the robot config's state, actions and
cameras:

    state: observation.state            # float feature holding the measured joint positions
    action: action                      # float feature holding the commanded targets
    cameras:                            # config camera name -> LeRobot video/image feature
      base: observation.images.top
      wrist: observation.images.wrist
    joints:                             # optional: config joint -> entry of the features'
      shoulder: shoulder_pan.pos        # "names" list (or its index); default: the same name,
                                        # else position order when the feature has no names

LeRobot's `action` of frame t is what the robot was told after observing frame t, the same
meaning as our `actions` (train/dataset.py), so frames map one to one. The dataset's fps must
equal 1 / the config's chunk.step_duration_s. Every problem raises `LeRobotError` naming the
file and the feature.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import yaml

from ki_vla_ros.runtime.config import RobotConfig
from ki_vla_ros.train.dataset import EpisodeDataset, compute_norm_stats, write_dataset

INFO_PATH = "meta/info.json"
V30, V21 = "v3.0", "v2.1"
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
TASKS_PARQUET = "meta/tasks.parquet"
STATS_PATH = "meta/stats.json"
STATE_FEATURE, ACTION_FEATURE, IMAGE_PREFIX = "observation.state", "action", "observation.images."
VIDEO_CODEC = "libx264"  # H.264 decodes everywhere (LeRobot's own default is AV1, libsvtav1)
VIDEO_CRF = "10"  # near-lossless: image round trips stay within a few grey levels
FPS_TOLERANCE = 0.01  # relative: a video's frame rate may differ this much from info.json's fps


class LeRobotError(ValueError):
    """A LeRobot dataset (or mapping) that cannot be used; the message names the file and feature."""


@dataclass(frozen=True)
class LeRobotMapping:
    """Which LeRobot features hold the robot config's state, actions and cameras."""

    state: str
    action: str
    cameras: Mapping[str, str]  # config camera name -> LeRobot feature
    joints: Mapping[str, str | int]  # config state/action name -> entry of the feature's names

    @classmethod
    def load(cls, path: str | Path) -> "LeRobotMapping":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise LeRobotError(f"mapping file {path} cannot be read: {e}") from e
        if not isinstance(raw, dict) or not isinstance(raw.get("cameras"), dict):
            raise LeRobotError(f"mapping file {path} holds {raw!r}; expected a mapping with 'cameras: {{config "
                               f"camera: LeRobot feature}}' and optional 'state', 'action', 'joints'")
        unknown = sorted(set(raw) - {"state", "action", "cameras", "joints"})
        if unknown:
            raise LeRobotError(f"mapping file {path} has unknown key(s) {unknown}; expected state, action, "
                               f"cameras, joints")
        joints = raw.get("joints") or {}
        if not isinstance(joints, dict):
            raise LeRobotError(f"mapping file {path} joints is {joints!r}; expected {{config joint: name or index}}")
        return cls(state=str(raw.get("state", STATE_FEATURE)), action=str(raw.get("action", ACTION_FEATURE)),
                   cameras={str(k): str(v) for k, v in raw["cameras"].items()},
                   joints={str(k): v for k, v in joints.items()})


# ----------------------------------------------------------------------------- reading
class LeRobotReader:
    """A local LeRobot v2.1 / v3.0 dataset directory, read episode by episode."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.info_path = self.root / INFO_PATH
        if not self.info_path.is_file():
            raise LeRobotError(f"{self.root} has no {INFO_PATH}; expected a LeRobot dataset directory")
        self.info: dict = json.loads(self.info_path.read_text())
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in (V30, V21):
            raise LeRobotError(f"{self.info_path} codebase_version is {self.version!r}; expected {V21!r} or {V30!r}")
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()
        self._tables: dict[Path, Any] = {}

    def feature(self, key: str, role: str) -> dict:
        if key not in self.features:
            raise LeRobotError(f"{self.info_path} has no feature {key!r} (the mapping's {role}); it has "
                               f"{sorted(self.features)}")
        return self.features[key]

    def _read_tasks(self) -> dict[int, str]:
        if self.version == V21:
            rows = _jsonl(self.root / "meta/tasks.jsonl")
            return {int(r["task_index"]): str(r["task"]) for r in rows}
        import pyarrow.parquet as pq

        table = pq.read_table(self.root / TASKS_PARQUET).to_pydict()
        return {int(i): str(t) for i, t in zip(table["task_index"], table["task"])}

    def _read_episodes(self) -> list[dict]:
        if self.version == V21:
            return sorted(_jsonl(self.root / "meta/episodes.jsonl"), key=lambda e: e["episode_index"])
        import pyarrow.parquet as pq

        files = sorted((self.root / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise LeRobotError(f"{self.root / 'meta/episodes'} has no chunk-*/file-*.parquet; expected the "
                               f"v3.0 episode table")
        rows = [row for f in files for row in pq.read_table(f).to_pylist()]
        return sorted(rows, key=lambda e: e["episode_index"])

    def _data_path(self, ep: dict) -> Path:
        if self.version == V21:
            chunk = ep["episode_index"] // int(self.info.get("chunks_size", 1000))
            return self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=ep["episode_index"])
        return self.root / self.info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                         file_index=ep["data/file_index"])

    def _video_path(self, ep: dict, key: str) -> tuple[Path, float]:
        """The mp4 holding episode `ep` of video feature `key`, and the episode's start time in it (s)."""
        if self.version == V21:
            chunk = ep["episode_index"] // int(self.info.get("chunks_size", 1000))
            return self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=key,
                                                              episode_index=ep["episode_index"]), 0.0
        path = self.info["video_path"].format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
                                              file_index=ep[f"videos/{key}/file_index"])
        return self.root / path, float(ep[f"videos/{key}/from_timestamp"])

    def _rows(self, ep: dict) -> dict[str, np.ndarray]:
        """Episode ep's parquet rows, sorted by frame_index: {column: array [T, ...]}."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path = self._data_path(ep)
        if path not in self._tables:
            if not path.is_file():
                raise LeRobotError(f"data file {path} of episode {ep['episode_index']} is missing")
            self._tables = {path: pq.read_table(path)}  # one file in memory at a time
        table = self._tables[path]
        table = table.filter(pc.equal(table["episode_index"], ep["episode_index"]))
        table = table.sort_by("frame_index")
        if table.num_rows != ep["length"]:
            raise LeRobotError(f"data file {path} has {table.num_rows} rows of episode {ep['episode_index']}; "
                               f"the episode table says length {ep['length']}")
        return {name: table[name] for name in table.column_names}

    def episode(self, i: int, config: RobotConfig, mapping: LeRobotMapping) -> dict:
        """Episode i as an episode dict for write_dataset (images, state, actions, instruction, ...)."""
        ep = self.episodes[i]
        rows = self._rows(ep)
        path = self._data_path(ep)
        columns = {}
        for role, key, names in (("state", mapping.state, config.state_names),
                                 ("action", mapping.action, config.action_names)):
            feature = self.feature(key, role)
            if key not in rows:
                raise LeRobotError(f"data file {path} has no column for feature {key!r} (the mapping's {role}); "
                                   f"it has {sorted(rows)}")
            values = np.asarray(rows[key].to_pylist(), dtype=np.float32).reshape(ep["length"], -1)
            columns[role] = values[:, _select(feature, key, names, mapping, self.info_path)]
        if "timestamp" not in rows:
            raise LeRobotError(f"data file {path} has no column for feature 'timestamp'; it has {sorted(rows)}")
        timestamps = np.asarray(rows["timestamp"].to_pylist(), dtype=np.float64)
        expected = np.arange(ep["length"]) / self.fps
        off = np.abs(timestamps - timestamps[0] - expected)
        if off.max() > 0.5 / self.fps:
            t = int(off.argmax())
            raise LeRobotError(f"data file {path} feature 'timestamp' of episode {ep['episode_index']} frame {t} is "
                               f"{timestamps[t]:.4f} s; expected {timestamps[0] + expected[t]:.4f} s at "
                               f"{INFO_PATH} fps {self.fps:g}")
        images = {}
        for camera in config.cameras:
            if camera.name not in mapping.cameras:
                raise LeRobotError(f"the mapping names no LeRobot feature for config camera {camera.name!r}; "
                                   f"cameras: {dict(mapping.cameras)}")
            key = mapping.cameras[camera.name]
            feature = self.feature(key, f"cameras.{camera.name}")
            if feature.get("dtype") == "video":
                video, start_s = self._video_path(ep, key)
                images[camera.name] = decode_video(video, key, start_s + float(timestamps[0]), ep["length"],
                                                   self.fps)
            elif feature.get("dtype") == "image":
                images[camera.name] = _decode_images(rows.get(key), path, key, ep["length"])
            else:
                raise LeRobotError(f"{self.info_path} feature {key!r} has dtype {feature.get('dtype')!r}; expected "
                                   f"'video' or 'image' for config camera {camera.name!r}")
        task_index = rows["task_index"][0].as_py() if "task_index" in rows else None
        tasks = ep.get("tasks") or []
        instruction = self.tasks.get(task_index) if task_index is not None else None
        instruction = instruction or (tasks[0] if tasks else config.default_instruction)
        return {"images": images, "state": columns["state"], "actions": columns["action"],
                "instruction": instruction, "source": f"lerobot:{self.root}",
                "lerobot_episode_index": int(ep["episode_index"])}


def _select(feature: dict, key: str, names: tuple[str, ...], mapping: LeRobotMapping, where: Path) -> list[int]:
    """Indices into a vector feature for each config name (via mapping.joints, else equal names)."""
    raw_names = feature.get("names")
    if isinstance(raw_names, dict):  # {"motors": [...]} in older datasets
        raw_names = next(iter(raw_names.values()), None)
    size = int(np.prod(feature.get("shape", [0])))
    index = {str(n): i for i, n in enumerate(raw_names or [])}
    picked = []
    for pos, name in enumerate(names):
        wanted = mapping.joints.get(name, name)
        if isinstance(wanted, int) and 0 <= wanted < size:
            picked.append(wanted)
        elif str(wanted) in index:
            picked.append(index[str(wanted)])
        elif not raw_names and size == len(names) and name not in mapping.joints:
            picked.append(pos)
        else:
            raise LeRobotError(f"{where} feature {key!r} has no entry {wanted!r} for config joint {name!r}; its "
                               f"names are {raw_names} (size {size}); expected a name or index via the "
                               f"mapping's joints")
    return picked


def decode_video(path: Path, feature: str, start_s: float, count: int, fps: float) -> np.ndarray:
    """`count` RGB frames uint8 [count, H, W, 3] of an mp4 from `start_s` on (PyAV)."""
    import av

    if not path.is_file():
        raise LeRobotError(f"video file {path} of feature {feature!r} is missing")
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.base_rate or 0)
        if abs(rate - fps) > FPS_TOLERANCE * fps:
            raise LeRobotError(f"video file {path} of feature {feature!r} runs at {rate:g} fps; expected "
                               f"{fps:g} fps ({INFO_PATH} fps)")
        if start_s > 0:
            container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time is not None and frame.time < start_s - 0.5 / fps:
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    if len(frames) < count:
        raise LeRobotError(f"video file {path} of feature {feature!r} has {len(frames)} frame(s) from "
                           f"{start_s:.3f} s; expected {count} (the episode's frames)")
    return np.stack(frames)


def _decode_images(column, path: Path, key: str, count: int) -> np.ndarray:
    """An 'image' feature: a parquet column of {bytes, path} PNG/JPEG structs -> uint8 [T, H, W, 3] RGB."""
    import cv2

    if column is None:
        raise LeRobotError(f"data file {path} has no column for image feature {key!r}")
    out = []
    for t, cell in enumerate(column.to_pylist()[:count]):
        data = (cell or {}).get("bytes")
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            raise LeRobotError(f"data file {path} feature {key!r} frame {t} is not a decodable image")
        out.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return np.stack(out)


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise LeRobotError(f"{path} is missing; expected it in a LeRobot v2.1 dataset")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lerobot_episodes(root: str | Path, config: RobotConfig, mapping: LeRobotMapping) -> Iterator[dict]:
    """Every episode of a LeRobot dataset, mapped onto `config` (checks fps first)."""
    reader = LeRobotReader(root)
    step_s = config.chunk.step_duration_s
    if abs(reader.fps * step_s - 1.0) > FPS_TOLERANCE:
        raise LeRobotError(f"{reader.info_path} fps is {reader.fps:g}; the robot config {config.source} has "
                           f"chunk.step_duration_s {step_s} ({1 / step_s:g} steps/s); expected the same rate")
    for i in range(len(reader.episodes)):
        yield reader.episode(i, config, mapping)


def convert_lerobot(root: str | Path, config: RobotConfig, mapping: LeRobotMapping, out_dir,
                    overwrite: bool = False) -> Path:
    """A LeRobot dataset -> our dataset directory at out_dir (with norm_stats.json)."""
    out = Path(out_dir)
    existed = out.exists() and any(out.iterdir())
    try:
        written = write_dataset(out, lerobot_episodes(root, config, mapping), robot=config.name,
                                state_names=config.state_names, action_names=config.action_names,
                                cameras=[c.name for c in config.cameras],
                                camera_slots={c.name: c.slot for c in config.cameras},
                                step_duration_s=config.chunk.step_duration_s, overwrite=overwrite)
    except BaseException:
        if not existed or overwrite:
            shutil.rmtree(out, ignore_errors=True)
        raise
    compute_norm_stats(EpisodeDataset.open(written), save=True)
    return written


# ----------------------------------------------------------------------------- writing
def export_lerobot(dataset: EpisodeDataset, out_dir, *, overwrite: bool = False) -> Path:
    """Write `dataset` as a LeRobot v3.0 dataset directory (one data file, one mp4 per camera).

    Features: observation.state, action (names from meta.json), observation.images.<camera>
    (H.264 mp4, yuv420p: lossy, even sizes only), plus timestamp, frame_index, episode_index,
    index, task_index. fps = 1 / step_duration_s, which must be a whole number.
    """
    import pyarrow as pa

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise LeRobotError(f"output directory {out} is not empty; expected a new or empty directory")
        shutil.rmtree(out)
    fps = round(1.0 / dataset.step_duration_s)
    if abs(fps * dataset.step_duration_s - 1.0) > 1e-6:
        raise LeRobotError(f"dataset {dataset.root} step_duration_s is {dataset.step_duration_s}; LeRobot needs a "
                           f"whole number of frames per second (e.g. 0.1 s -> 10 fps)")
    shapes = {c: dataset.frame_images(0, 0)[c].shape for c in dataset.cameras}
    for camera, (h, w, _) in shapes.items():
        if h % 2 or w % 2:
            raise LeRobotError(f"dataset {dataset.root} camera {camera!r} images are {w}x{h}; H.264 (yuv420p) "
                               f"needs even width and height")
    tasks: dict[str, int] = {}
    columns: dict[str, list] = {k: [] for k in ("state", "action", "timestamp", "frame_index", "episode_index",
                                                "index", "task_index")}
    episodes: list[dict] = []
    writers = {c: Mp4Writer(out / V30_VIDEO_PATH.format(video_key=IMAGE_PREFIX + c, chunk_index=0, file_index=0),
                               fps, shapes[c]) for c in dataset.cameras}
    try:
        total = 0
        for i in range(len(dataset)):
            ep = dataset.episode(i)
            length = ep["length"]
            task_index = tasks.setdefault(ep["instruction"], len(tasks))
            columns["state"].append(ep["state"])
            columns["action"].append(ep["actions"])
            columns["timestamp"].append(np.arange(length, dtype=np.float32) / fps)
            columns["frame_index"].append(np.arange(length))
            columns["episode_index"].append(np.full(length, i))
            columns["index"].append(total + np.arange(length))
            columns["task_index"].append(np.full(length, task_index))
            row = {"episode_index": i, "tasks": [ep["instruction"]], "length": length,
                   "data/chunk_index": 0, "data/file_index": 0,
                   "dataset_from_index": total, "dataset_to_index": total + length}
            for camera, writer in writers.items():
                images = ep["images"][camera]
                if images.shape[1:] != shapes[camera]:
                    raise LeRobotError(f"dataset {dataset.root} episode {i} camera {camera!r} images are "
                                       f"{list(images.shape[1:])}; LeRobot needs one size per camera, "
                                       f"episode 0 has {list(shapes[camera])}")
                key = IMAGE_PREFIX + camera
                row.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                            f"videos/{key}/from_timestamp": writer.frames / fps,
                            f"videos/{key}/to_timestamp": (writer.frames + length) / fps})
                writer.add(images)
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            episodes.append(row)
            total += length
    finally:
        for writer in writers.values():
            writer.close()

    state, action = np.concatenate(columns["state"]), np.concatenate(columns["action"])
    data = {STATE_FEATURE: _fixed_list(state), ACTION_FEATURE: _fixed_list(action),
            "timestamp": pa.array(np.concatenate(columns["timestamp"]), pa.float32())}
    for key in ("frame_index", "episode_index", "index", "task_index"):
        data[key] = pa.array(np.concatenate(columns[key]).astype(np.int64))
    _write_parquet(pa.table(data), out / V30_DATA_PATH.format(chunk_index=0, file_index=0))
    _write_parquet(pa.Table.from_pylist(episodes), out / V30_EPISODES_FILE)
    _write_parquet(_tasks_table(tasks), out / TASKS_PARQUET)
    (out / STATS_PATH).write_text(json.dumps({STATE_FEATURE: _stats(state), ACTION_FEATURE: _stats(action)},
                                             indent=1) + "\n")

    features = {STATE_FEATURE: {"dtype": "float32", "shape": [len(dataset.state_names)],
                                "names": list(dataset.state_names)},
                ACTION_FEATURE: {"dtype": "float32", "shape": [len(dataset.action_names)],
                                 "names": list(dataset.action_names)}}
    for camera, (h, w, c) in shapes.items():
        features[IMAGE_PREFIX + camera] = {
            "dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                     "video.is_depth_map": False, "video.fps": fps, "video.channels": c, "has_audio": False}}
    for key, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                       ("index", "int64"), ("task_index", "int64")):
        features[key] = {"dtype": dtype, "shape": [1], "names": None}
    info = {"codebase_version": V30, "robot_type": dataset.robot, "total_episodes": len(dataset),
            "total_frames": total, "total_tasks": len(tasks), "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200, "fps": fps, "splits": {"train": f"0:{len(dataset)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}
    (out / INFO_PATH).write_text(json.dumps(info, indent=4) + "\n")
    return out


class Mp4Writer:
    """One mp4 (H.264, yuv420p) that episodes are appended to, frame by frame (PyAV)."""

    def __init__(self, path: Path, fps: int, shape: tuple[int, int, int]):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(VIDEO_CODEC, rate=Fraction(fps))
        self.stream.height, self.stream.width = shape[0], shape[1]
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": VIDEO_CRF, "g": "2"}  # short GOP: LeRobot seeks to any frame
        self.frames = 0

    def add(self, images: np.ndarray) -> None:
        import av

        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def _fixed_list(values: np.ndarray):
    """float32 [N, D] -> an arrow fixed_size_list<float32>[D] column (datasets' Sequence(length=D))."""
    import pyarrow as pa

    flat = pa.array(values.astype(np.float32).ravel(), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def _tasks_table(tasks: Mapping[str, int]):
    """meta/tasks.parquet as pandas' DataFrame.to_parquet writes it: 'task' is the index column."""
    import pyarrow as pa

    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                      "task": pa.array(list(tasks), pa.string())})
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "pandas_version": "2.2.3",
                   "creator": {"library": "pyarrow", "version": pa.__version__},
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}]}
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _stats(values: np.ndarray) -> dict[str, list]:
    """LeRobot's per-feature stats of a [N, D] array."""
    return {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(), "count": [int(len(values))],
            "q01": np.quantile(values, 0.01, axis=0).tolist(), "q99": np.quantile(values, 0.99, axis=0).tolist()}
