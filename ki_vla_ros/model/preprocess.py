"""The one preprocessing path from sensor data to model input (training, replay, live).

    camera image  HxWx3 uint8 RGB -> resize_with_pad -> image_to_tensor -> [3, S, S] in [-1, 1]
    state [D]     -> normalize (normalize.py) -> discretize_state -> format_prompt -> text

Every function validates its input and raises ValueError naming the input, the value and
what was expected, so a bad camera frame or joint state is reported, never turned into motion.
"""

from __future__ import annotations

import functools
from typing import Sequence

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
    if tuple(img.shape[:2]) == (size, size):
        return img.copy()
    new_h, new_w, top, left, shrink = _fit_inside(*img.shape[:2], size)
    import cv2  # here, not at the top: the device-side path and the GPU check run without OpenCV

    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(img), (new_w, new_h), interpolation=interp)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[top : top + new_h, left : left + new_w] = resized
    return out


def resize_with_pad_torch(img: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """`resize_with_pad` on a torch tensor, on its device (a GPU: no CPU resize per frame).

    img: [H, W, 3] uint8 -> [size, size, 3] uint8, same geometry. The resampling is written as
    two matrix products (rows, then columns) with OpenCV's weights: area overlap when shrinking
    (INTER_AREA), half-pixel-centred linear when growing (INTER_LINEAR), so the result equals
    the OpenCV path within one uint8 level (OpenCV rounds its linear weights to 11 bits).
    """
    if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"image has shape {tuple(img.shape)} and dtype {img.dtype}; expected HxWx3 uint8")
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img.clone()
    new_h, new_w, top, left, shrink = _fit_inside(h, w, size)
    rows = _resample_matrix(h, new_h, shrink, str(img.device))  # [new_h, h]
    cols = _resample_matrix(w, new_w, shrink, str(img.device))  # [new_w, w]
    resized = torch.einsum("ih,hwc,jw->ijc", rows, img.float(), cols).round().clamp(0, 255).to(torch.uint8)
    out = torch.zeros(size, size, 3, dtype=torch.uint8, device=img.device)
    out[top : top + new_h, left : left + new_w] = resized
    return out


def _fit_inside(h: int, w: int, size: int) -> tuple[int, int, int, int, bool]:
    """Geometry of resize_with_pad -> (new_h, new_w, top, left, shrinking): the longer side becomes
    size, the other int(side / ratio); the odd padding pixel, if any, goes to the bottom / right."""
    if size <= 0:
        raise ValueError(f"size is {size}; expected a positive number of pixels")
    ratio = max(w / size, h / size)
    new_h, new_w = max(1, int(h / ratio)), max(1, int(w / ratio))
    return new_h, new_w, (size - new_h) // 2, (size - new_w) // 2, ratio > 1


@functools.lru_cache(maxsize=32)
def _resample_matrix(n_in: int, n_out: int, area: bool, device: str) -> torch.Tensor:
    """OpenCV's 1-D resampling weights as a matrix [n_out, n_in] (float32, rows sum to 1), kept on
    `device` (a camera's size rarely changes: one upload per size)."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        if area:  # output pixel i averages input [i * scale, (i + 1) * scale), by overlap
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
                m[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
        else:  # sample at the half-pixel-centred source position, clamped at the borders
            x = (i + 0.5) * scale - 0.5
            j = int(np.floor(x))
            frac = x - j
            if j < 0:
                j, frac = 0, 0.0
            if j >= n_in - 1:
                j, frac = n_in - 1, 0.0
            m[i, j] += 1 - frac
            if frac:
                m[i, j + 1] += frac
    return torch.from_numpy(m).float().to(device)


def preprocess_image_torch(img: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """[H, W, 3] uint8 tensor (any device) -> model input [3, size, size] float32 in [-1, 1], on that device."""
    return resize_with_pad_torch(img, size).permute(2, 0, 1).float() / 255.0 * 2.0 - 1.0


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> float32 tensor [3, H, W] in [-1, 1] (uint8 / 255 * 2 - 1)."""
    check_image(img)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0 * 2.0 - 1.0


def preprocess_image(img: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Camera image HxWx3 uint8 (any size) -> model input [3, size, size] in [-1, 1]."""
    return image_to_tensor(resize_with_pad(img, size))


# ------------------------------------------------------------- state + prompt
def discretize_state(state_norm: np.ndarray, num_bins: int = STATE_BINS) -> np.ndarray:
    """Normalized state [D] (about [-1, 1]) -> int64 bins [D] (π0.5 state text), exactly openpi's
    tokenizer: np.digitize(x, linspace(-1, 1, num_bins + 1)[:-1]) - 1.

    Bin i covers [-1 + 2i/num_bins, -1 + 2(i+1)/num_bins); -1 -> 0, 0 -> num_bins/2, and 1 or
    more -> num_bins - 1. Below -1 gives -1 (openpi does not clip the low side, and the
    released models were trained on its strings), so the bins lie in [-1, num_bins).
    """
    state_norm = check_state(state_norm, name="normalized state")
    edges = np.linspace(-1.0, 1.0, num_bins + 1)[:-1]
    return (np.digitize(state_norm, bins=edges) - 1).astype(np.int64)


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
