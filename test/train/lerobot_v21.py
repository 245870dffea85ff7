"""Writes a small LeRobot v2.1 dataset with pyarrow and PyAV (the libraries train/lerobot.py uses).

v2.1 layout (huggingface/lerobot scripts/convert_dataset_v21_to_v30.py): per-episode parquet
data/chunk-000/episode_{i:06d}.parquet and mp4 videos/chunk-000/<key>/episode_{i:06d}.mp4 (each
from 0 s), meta/episodes.jsonl, meta/tasks.jsonl, meta/info.json with path templates.
Feature names here are a LeRobot robot's (SO-100 style), not the robot config's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ki_vla_ros.train.lerobot import Mp4Writer

JOINT_NAMES = ["shoulder_pan.pos", "elbow_flex.pos", "wrist_roll.pos", "gripper.pos", "unused.pos"]
CAMERAS = {"observation.images.top": (48, 64), "observation.images.hand": (32, 32)}


def write_v21(root: Path, episodes: list[dict], fps: int = 10, video_fps: int | None = None,
              short_video_frames: int = 0) -> Path:
    """episodes: {"state", "action": float32 [T, 5], "images": {key: uint8 [T, H, W, 3]}, "task"}.

    video_fps: the rate written into the mp4s (default fps); short_video_frames: drop that many
    frames from the end of every video (a truncated recording)."""
    (root / "meta").mkdir(parents=True)
    tasks = {t: i for i, t in enumerate(dict.fromkeys(e["task"] for e in episodes))}
    index = 0
    for i, ep in enumerate(episodes):
        length = len(ep["state"])
        table = pa.table({
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(ep["state"].ravel()), 5),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(ep["action"].ravel()), 5),
            "timestamp": pa.array(np.arange(length, dtype=np.float32) / fps),
            "frame_index": pa.array(np.arange(length)), "episode_index": pa.array(np.full(length, i)),
            "index": pa.array(index + np.arange(length)), "task_index": pa.array(np.full(length, tasks[ep["task"]]))})
        path = root / f"data/chunk-000/episode_{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        index += length
        for key, (h, w) in CAMERAS.items():
            writer = Mp4Writer(root / f"videos/chunk-000/{key}/episode_{i:06d}.mp4", video_fps or fps, (h, w, 3))
            writer.add(ep["images"][key][:length - short_video_frames])
            writer.close()
    (root / "meta/episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": i, "tasks": [e["task"]], "length": len(e["state"])}) + "\n"
        for i, e in enumerate(episodes)))
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                   for t, i in tasks.items()))
    features = {"observation.state": {"dtype": "float32", "shape": [5], "names": JOINT_NAMES},
                "action": {"dtype": "float32", "shape": [5], "names": JOINT_NAMES}}
    features.update({key: {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"]}
                     for key, (h, w) in CAMERAS.items()})
    info = {"codebase_version": "v2.1", "robot_type": "so100", "fps": fps, "chunks_size": 1000,
            "total_episodes": len(episodes), "total_frames": index,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": features}
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    return root
