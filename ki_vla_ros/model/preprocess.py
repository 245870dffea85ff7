"""The one preprocessing path from sensor data to model input (training, replay, live).

    camera image  HxWx3 uint8 RGB -> resize_with_pad -> image_to_tensor -> [3, S, S] in [-1, 1]
    state [D]     -> normalize (normalize.py) -> discretize_state -> format_prompt -> text

Every function validates its input and raises ValueError naming the input, the value and
what was expected, so a bad camera frame or joint state is reported, never turned into motion.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

IMAGE_SIZE = 224
STATE_BINS = 256


# ------------------------------------------------------------------ validation
def check_image(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Return img if it is a non-empty HxWx3 uint8 array; otherwise raise ValueError naming it."""
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{name} is a {type(img).__name__}; expected an HxWx3 uint8 numpy array")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} has shape {img.shape}; expected HxWx3 (RGB)")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {img.shape}); expected HxWx3 with H, W > 0")
    if img.dtype != np.uint8:
        raise ValueError(f"{name} has dtype {img.dtype}; expected uint8")
    return img


def check_state(state: np.ndarray, expected_dim: int | None = None, name: str = "state") -> np.ndarray:
    """Return state as a float array [D] if it is 1-D, finite and (optionally) of length expected_dim."""
    arr = np.asarray(state)
    if arr.ndim != 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected a 1-D vector")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} has dtype {arr.dtype}; expected real numbers")
    if expected_dim is not None and arr.shape[0] != expected_dim:
        raise ValueError(f"{name} has length {arr.shape[0]}; expected {expected_dim}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {arr[bad[0]]}; expected a finite value")
    return arr.astype(np.float64, copy=False)


# ---------------------------------------------------------------------- images
def resize_with_pad(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 uint8: scale to fit, keep aspect, pad black around it.

    Same geometry as openpi's resize_with_pad (tf.image.resize_with_pad): the longer side
    becomes `size`, the other int(side / ratio); padding is split evenly with the odd pixel
    at the bottom / right. INTER_AREA when shrinking (no aliasing), INTER_LINEAR when growing.
    """
    check_image(img)
    if size <= 0:
        raise ValueError(f"size is {size}; expected a positive number of pixels")
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img.copy()
    ratio = max(w / size, h / size)
    new_h, new_w = max(1, int(h / ratio)), max(1, int(w / ratio))
    interp = cv2.INTER_AREA if ratio > 1 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(img), (new_w, new_h), interpolation=interp)
    top = (size - new_h) // 2  # the odd pixel, if any, goes to the bottom / right
    left = (size - new_w) // 2
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[top : top + new_h, left : left + new_w] = resized
    return out


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> float32 tensor [3, H, W] in [-1, 1] (uint8 / 255 * 2 - 1)."""
    check_image(img)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0 * 2.0 - 1.0


def preprocess_image(img: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Camera image HxWx3 uint8 (any size) -> model input [3, size, size] in [-1, 1]."""
    return image_to_tensor(resize_with_pad(img, size))


# ------------------------------------------------------------- state + prompt
def discretize_state(state_norm: np.ndarray, num_bins: int = STATE_BINS) -> np.ndarray:
    """Normalized state [D] in [-1, 1] -> int64 bins [D] in [0, num_bins) (π0.5 state text).

    Bin i covers [-1 + 2i/num_bins, -1 + 2(i+1)/num_bins); -1 -> 0, 0 -> num_bins/2, and
    values at or beyond the ends (1 included) go to the end bins.
    """
    state_norm = check_state(state_norm, name="normalized state")
    edges = np.linspace(-1.0, 1.0, num_bins + 1)[:-1]
    return np.clip(np.digitize(state_norm, bins=edges) - 1, 0, num_bins - 1).astype(np.int64)


def clean_task_text(task: str) -> str:
    """Strip, and turn underscores and newlines into spaces ("pick_up\\nthe cup " -> "pick up the cup")."""
    if not isinstance(task, str):
        raise ValueError(f"task is a {type(task).__name__}; expected a string")
    return task.strip().replace("_", " ").replace("\n", " ")


def format_prompt(task: str, state_bins: Sequence[int]) -> str:
    """The π0.5 prompt: "Task: {task}, State: {bins};\\nAction: "."""
    bins = np.asarray(state_bins)
    if bins.ndim != 1 or (bins.size and not np.issubdtype(bins.dtype, np.integer)):
        raise ValueError(f"state_bins is {state_bins!r}; expected a 1-D sequence of integer bins")
    state_str = " ".join(str(int(b)) for b in bins)
    return f"Task: {clean_task_text(task)}, State: {state_str};\nAction: "
