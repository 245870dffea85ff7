"""Observation dicts as openpi's example clients send them -> (images by model slot, state, prompt).

    layout   detected by            images (model slot order)                     state (concatenated)
    ki_vla   "images" is a list     images[i] (None = missing camera)             "state"
    libero   "observation/image"    observation/image, observation/wrist_image    observation/state
    droid    "observation/          observation/exterior_image_1_left,            observation/joint_position,
              exterior_image_1_left" observation/wrist_image_left                 observation/gripper_position
    aloha    "images" is a dict     images.cam_high, images.cam_left_wrist,       state
                                    images.cam_right_wrist (cam_low unused, as in openpi's pi0 ALOHA inputs)

Every layout takes "prompt" (str). Images are HxWx3 uint8 of any size; a 3xHxW array (what
openpi's ALOHA client sends) is transposed. A layout with more images than the model has
slots fills the slots in the order above and refuses the rest by name; fewer leave the
remaining slots empty (masked). Optional ki_vla keys for real-time chunking and
reproducibility: "previous_actions" [K, action_dim], "inference_delay_steps" int, "noise"
[H, D]. The reply's "actions" are [H, action_dim] float32 in the units of "state".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

KeyPath = tuple[str, ...]


class RequestError(ValueError):
    """A request the server cannot use; the message names the field, the value and what was expected."""


@dataclass(frozen=True)
class ObservationLayout:
    name: str
    images: tuple[KeyPath, ...]  # model slot order
    state: tuple[KeyPath, ...]  # concatenated in this order
    prompt: KeyPath = ("prompt",)


LAYOUTS = {
    "libero": ObservationLayout("libero", (("observation/image",), ("observation/wrist_image",)),
                                (("observation/state",),)),
    "droid": ObservationLayout("droid", (("observation/exterior_image_1_left",), ("observation/wrist_image_left",)),
                               (("observation/joint_position",), ("observation/gripper_position",))),
    "aloha": ObservationLayout("aloha", (("images", "cam_high"), ("images", "cam_left_wrist"),
                                         ("images", "cam_right_wrist")), (("state",),)),
}


@dataclass(frozen=True)
class ChunkRequest:
    """One decoded, checked request for a predictor."""

    layout: str
    images: list[np.ndarray | None]  # num_cameras entries, HxWx3 uint8
    state: np.ndarray  # float64 [state_dim]
    prompt: str
    noise: np.ndarray | None = None
    previous_actions: np.ndarray | None = None
    inference_delay_steps: int = 0


def detect_layout(observation: Mapping[str, Any]) -> str:
    if not isinstance(observation, Mapping):
        raise RequestError(f"request is a {type(observation).__name__}; expected a map (observation dict)")
    images = observation.get("images")
    if isinstance(images, list):
        return "ki_vla"
    if isinstance(images, Mapping):
        return "aloha"
    if "observation/image" in observation:
        return "libero"
    if "observation/exterior_image_1_left" in observation:
        return "droid"
    raise RequestError(f"request keys {sorted(map(str, observation))[:12]} match no known layout; expected "
                       "'images' (list: ki_vla, map: aloha), 'observation/image' (libero) or "
                       "'observation/exterior_image_1_left' (droid), and 'prompt'")


def _get(observation: Mapping[str, Any], path: KeyPath) -> Any:
    value: Any = observation
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            raise RequestError(f"field '{'.'.join(path)}' is missing")
        value = value[key]
    return value


def check_image(value: Any, field: str) -> np.ndarray:
    """HxWx3 uint8 (or 3xHxW, transposed) -> HxWx3 uint8."""
    if not isinstance(value, np.ndarray):
        raise RequestError(f"field '{field}' is a {type(value).__name__}; expected an HxWx3 uint8 array")
    if value.ndim == 3 and value.shape[0] == 3 and value.shape[-1] != 3:
        value = np.ascontiguousarray(value.transpose(1, 2, 0))  # CHW (openpi's ALOHA client)
    if value.dtype != np.uint8 or value.ndim != 3 or value.shape[-1] != 3 or min(value.shape[:2]) < 1:
        raise RequestError(f"field '{field}' is {value.dtype} of shape {list(value.shape)}; expected an HxWx3 "
                           f"uint8 array")
    return value


def _numbers(value: Any, field: str) -> np.ndarray:
    array = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray, np.generic, int, float)) else None
    if array is None or array.dtype.kind not in "iuf" or not np.all(np.isfinite(array)):
        raise RequestError(f"field '{field}' is {_show(value)}; expected finite numbers")
    return array.astype(np.float64)


def parse_request(observation: Mapping[str, Any], *, num_cameras: int, state_dim: int, action_dim: int,
                  horizon: int, noise_dim: int) -> ChunkRequest:
    """Decode one observation dict for a model of these sizes; RequestError names what is wrong."""
    layout = detect_layout(observation)
    if layout == "ki_vla":
        raw_images = observation["images"]
        fields = [f"images[{i}]" for i in range(len(raw_images))]
        state_fields: tuple[KeyPath, ...] = (("state",),)
    else:
        spec = LAYOUTS[layout]
        raw_images = [_get(observation, path) for path in spec.images]
        fields = [".".join(path) for path in spec.images]
        state_fields = spec.state
    if len(raw_images) > num_cameras:
        raise RequestError(f"field '{fields[num_cameras]}' has no model slot: the {layout} layout gives "
                           f"{len(raw_images)} images, the model has {num_cameras} camera slot(s)")
    images = [None if img is None else check_image(img, field) for img, field in zip(raw_images, fields)]
    images += [None] * (num_cameras - len(images))
    if all(img is None for img in images):
        raise RequestError(f"fields {fields} hold no image; expected at least one HxWx3 uint8 image")
    state = np.concatenate([_numbers(_get(observation, p), ".".join(p)).reshape(-1) for p in state_fields])
    if state.shape != (state_dim,):
        names = "+".join(".".join(p) for p in state_fields)
        raise RequestError(f"field '{names}' has {state.size} values; the model's state has {state_dim}")
    prompt = _get(observation, ("prompt",))
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(f"field 'prompt' is {_show(prompt)}; expected a non-empty task string")
    noise = observation.get("noise")
    if noise is not None:
        noise = _numbers(noise, "noise").astype(np.float32)
        if noise.shape not in ((horizon, noise_dim), (horizon, action_dim)):
            raise RequestError(f"field 'noise' has shape {list(noise.shape)}; expected {[horizon, noise_dim]}")
    previous = observation.get("previous_actions")
    delay = observation.get("inference_delay_steps", 0)
    if previous is not None:
        previous = _numbers(previous, "previous_actions").astype(np.float32)
        if previous.ndim != 2 or previous.shape[1] != action_dim or not 1 <= previous.shape[0] <= horizon:
            raise RequestError(f"field 'previous_actions' has shape {list(previous.shape)}; expected [K, "
                               f"{action_dim}] with 1 <= K <= {horizon}")
    if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)) or delay < 0:
        raise RequestError(f"field 'inference_delay_steps' is {_show(delay)}; expected an integer >= 0")
    return ChunkRequest(layout, images, state, prompt, noise, previous, int(delay))


def _show(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
