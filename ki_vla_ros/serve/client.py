"""RemotePredictor: the runtime's Predictor protocol (runtime/policy.py) over a websocket to `ki-vla serve`.

With `model.remote: ws://host:port` in the robot config, load_predictor returns this instead
of a model, and policy_node runs unchanged: every failure to get a usable chunk is a
PolicyError, which the node turns into a hold (no command) and reports on /diagnostics.

    refused / unreachable   PolicyError; the next attempt waits a backoff that doubles from
                            BACKOFF_INITIAL_S to BACKOFF_MAX_S (reset by a good connection);
                            calls in between fail at once, naming the wait
    no reply in timeout_s   PolicyError; the connection is dropped (a late reply must not be
                            taken for the next request's) and reconnected with backoff
    error reply (text)      PolicyError with the server's message; the connection stays
    malformed reply         PolicyError naming what was wrong; dropped and reconnected

Requests use the layout in model.remote_layout (serve/layouts.py):

    ki_vla   "images" (list by model slot, None = missing camera), "state", "prompt", and for
             real-time chunking "previous_actions" and "inference_delay_steps"; the sizes
             (num_cameras, state_dim, action_dim, action_horizon) come from the server's metadata
    libero   observation/image, observation/wrist_image (HxWx3), observation/state, prompt
    droid    observation/exterior_image_1_left, observation/wrist_image_left (HxWx3),
             observation/joint_position (state[:-1]), observation/gripper_position (state[-1:]), prompt
    aloha    images: {cam_high, cam_left_wrist, cam_right_wrist} (3xHxW), state, prompt

The openpi layouts are what openpi's example clients send, for an openpi server, whose metadata
states no sizes: camera slot i fills the layout's i-th image, resized with pad to 224x224 uint8
(as those clients do; an unused slot is sent black, since openpi servers need every key), the
state goes as float64. state_dim and action_dim are the robot config's; the horizon is the row
count of the first reply (one probe request at start-up) and every later reply must have it.
openpi returns actions in robot units, often already cut to the robot's dims (LIBERO 7, DROID 8,
ALOHA 14) but possibly padded (32): a reply with more dims than action_dim is an error unless
model.remote_extra_action_dims is drop (keep the first action_dim). Real-time chunking and fixed
noise are not sent to openpi servers (they take neither).

The token, if the server wants one, comes from the environment variable KI_VLA_SERVE_TOKEN
(never from a config file).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Sequence

import numpy as np
import websockets
from websockets.sync.client import connect

from ki_vla_ros.runtime.policy import PolicyError
from ki_vla_ros.serve.layouts import LAYOUTS
from ki_vla_ros.serve.protocol import ProtocolError, pack, unpack

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 5.0
TOKEN_ENV = "KI_VLA_SERVE_TOKEN"
OPENPI_IMAGE_SIZE = 224  # openpi's example clients resize with pad to this before sending
_SIZES = {"num_cameras": "num_cameras", "state_dim": "state_dim", "action_dim": "action_dim",
          "horizon": "action_horizon"}


class RemotePredictor:
    """Predictor protocol over the wire; thread-safe (one request at a time)."""

    def __init__(self, uri: str, *, timeout_s: float = 2.0, token: str | None = None, layout: str = "ki_vla",
                 state_dim: int | None = None, action_dim: int | None = None, extra_action_dims: str = "error"):
        """layout ki_vla: sizes from the server's metadata. An openpi layout (libero, droid, aloha):
        state_dim and action_dim are required (the robot's), the horizon is probed with one request."""
        if not uri.startswith(("ws://", "wss://")):
            raise ValueError(f"model.remote is {uri!r}; expected ws://host:port or wss://host:port")
        if layout != "ki_vla" and layout not in LAYOUTS:
            raise ValueError(f"model.remote_layout is {layout!r}; expected one of {['ki_vla', *LAYOUTS]}")
        if extra_action_dims not in ("error", "drop"):
            raise ValueError(f"model.remote_extra_action_dims is {extra_action_dims!r}; expected 'error' or 'drop'")
        self.uri = uri
        self.timeout_s = timeout_s
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.layout = layout
        self.extra_action_dims = extra_action_dims
        self.device = f"remote {uri}"
        self.reconnects = 0
        self.last_server_timing: dict = {}
        self._ws = None
        self._lock = threading.Lock()
        self._backoff_s = BACKOFF_INITIAL_S
        self._next_attempt_s = 0.0
        self._last_failure = ""
        with self._lock:
            self.metadata = self._open()  # fails loudly at start-up: sizes are needed to check the robot
        if layout != "ki_vla":
            if state_dim is None or action_dim is None:
                raise ValueError(f"model.remote_layout {layout} needs state_dim and action_dim (the robot's)")
            self.num_cameras = len(LAYOUTS[layout].images)
            self.state_dim, self.action_dim = int(state_dim), int(action_dim)
            self.horizon: int | None = None  # the first reply sets it
            self.warmup()
            return
        missing = [key for key in _SIZES.values() if not isinstance(self.metadata.get(key), int)]
        if missing:
            raise PolicyError(f"policy server {uri} metadata has no {missing}; expected a `ki-vla serve` server "
                              f"(got keys {sorted(self.metadata)}); for an openpi server set model.remote_layout "
                              f"to libero, droid or aloha")
        for attribute, key in _SIZES.items():
            setattr(self, attribute, int(self.metadata[key]))

    # ------------------------------------------------------------------ connection
    def _open(self) -> dict:
        headers = {"Authorization": f"Api-Key {self.token}"} if self.token else None
        try:
            ws = connect(self.uri, additional_headers=headers, compression=None, max_size=None,
                         open_timeout=self.timeout_s, legacy=True)
            metadata = unpack(ws.recv(timeout=self.timeout_s))
        except (OSError, TimeoutError, websockets.WebSocketException, ProtocolError) as error:
            self._fail(f"cannot connect: {type(error).__name__}: {error}")
        if not isinstance(metadata, dict):
            ws.close()
            self._fail(f"metadata is a {type(metadata).__name__}; expected a map")
        self._ws = ws
        self._backoff_s = BACKOFF_INITIAL_S
        return metadata

    def _fail(self, reason: str) -> None:
        """Drop the connection, schedule the next attempt, raise PolicyError(reason)."""
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        self._next_attempt_s = time.monotonic() + self._backoff_s
        self._last_failure = reason
        message = f"policy server {self.uri}: {reason}; next connection attempt in {self._backoff_s:.1f} s"
        self._backoff_s = min(2.0 * self._backoff_s, BACKOFF_MAX_S)
        raise PolicyError(message)

    def _request(self, message: dict[str, Any]) -> dict:
        with self._lock:
            if self._ws is None:
                wait_s = self._next_attempt_s - time.monotonic()
                if wait_s > 0:
                    raise PolicyError(f"policy server {self.uri}: {self._last_failure}; next connection attempt "
                                      f"in {wait_s:.1f} s")
                self._open()
                self.reconnects += 1
            try:
                self._ws.send(pack(message))
                reply = self._ws.recv(timeout=self.timeout_s)
            except TimeoutError:
                self._fail(f"no reply within {self.timeout_s} s")
            except (OSError, websockets.WebSocketException) as error:
                self._fail(f"connection lost: {type(error).__name__}: {error}")
            if isinstance(reply, str):
                raise PolicyError(f"policy server {self.uri} refused the request: {reply}")
            try:
                decoded = unpack(reply)
            except ProtocolError as error:
                self._fail(f"malformed reply: {error}")
            if not isinstance(decoded, dict):
                self._fail(f"malformed reply: a {type(decoded).__name__}; expected a map with 'actions'")
            return decoded

    def close(self) -> None:
        with self._lock:
            if self._ws is not None:
                self._ws.close()
                self._ws = None

    # ------------------------------------------------------------------ Predictor protocol
    def predict_chunk(self, images: Sequence[np.ndarray | None], state: np.ndarray, prompt: str,
                      noise: np.ndarray | None = None, previous_actions: np.ndarray | None = None,
                      inference_delay_steps: int = 0) -> np.ndarray:
        """[horizon, action_dim] float32 in robot units, computed by the server."""
        if self.layout == "ki_vla":
            message: dict[str, Any] = {"images": [None if img is None else np.ascontiguousarray(img)
                                                  for img in images],
                                       "state": np.asarray(state, dtype=np.float64), "prompt": prompt}
            if noise is not None:
                message["noise"] = np.asarray(noise, dtype=np.float32)
            if previous_actions is not None:
                message["previous_actions"] = np.asarray(previous_actions, dtype=np.float32)
                message["inference_delay_steps"] = int(inference_delay_steps)
        else:
            if noise is not None or previous_actions is not None:
                raise PolicyError(f"policy server {self.uri}: the {self.layout} layout (openpi) takes no noise and "
                                  "no running chunk; use chunk.mode blend")
            message = openpi_observation(self.layout, images, state, prompt)
        reply = self._request(message)
        self.last_server_timing = reply.get("server_timing", {})
        return self._checked_actions(reply.get("actions"))

    def _checked_actions(self, actions: Any) -> np.ndarray:
        """The reply's actions -> float32 [horizon, action_dim]; anything else fails naming the shape."""
        shown = f"{actions.dtype} {list(actions.shape)}" if isinstance(actions, np.ndarray) else repr(actions)[:60]
        horizon = self.horizon
        if isinstance(actions, np.ndarray) and actions.ndim == 2 and actions.dtype.kind == "f":
            rows, dims = actions.shape
            if horizon is None and rows >= 1:  # openpi layouts: the first good reply sets the horizon
                horizon = rows
            if rows == horizon and dims == self.action_dim:
                self.horizon = horizon
                return actions.astype(np.float32)
            if rows == horizon and dims > self.action_dim and self.layout != "ki_vla":
                if self.extra_action_dims == "drop":
                    self.horizon = horizon
                    return actions[:, : self.action_dim].astype(np.float32)
                with self._lock:
                    self._fail(f"malformed reply: 'actions' is {shown}; expected float [{horizon}, "
                               f"{self.action_dim}] (robot action_dim; set model.remote_extra_action_dims: drop to "
                               f"keep the first {self.action_dim} dims)")
        expected = f"[{'horizon' if horizon is None else horizon}, {self.action_dim}]"
        with self._lock:
            self._fail(f"malformed reply: 'actions' is {shown}; expected float {expected}")

    def generate_subtask(self, images: Sequence[np.ndarray | None], task: str, max_new_tokens: int = 24) -> str:
        raise PolicyError(f"the planner needs the model in-process; {self.uri} serves action chunks only")

    def warmup(self) -> float:
        """One blank request (the server warmed its model at start-up; this checks the path);
        returns its seconds, round trip included."""
        images = [np.zeros((32, 32, 3), np.uint8)] * self.num_cameras
        t0 = time.perf_counter()
        self.predict_chunk(images, np.zeros(self.state_dim), "warm up")  # openpi layouts: sets the horizon
        return time.perf_counter() - t0


def openpi_observation(layout: str, images: Sequence[np.ndarray | None], state: np.ndarray, prompt: str) -> dict:
    """The observation dict openpi's example client for `layout` (libero, droid, aloha) sends
    (module docstring): images by camera slot (HxWx3 uint8, None = unused slot), state [state_dim]."""
    from ki_vla_ros.model.preprocess import resize_with_pad  # OpenCV; only the openpi layouts need it

    spec = LAYOUTS[layout]
    size = OPENPI_IMAGE_SIZE
    sent = [np.zeros((size, size, 3), np.uint8) if img is None else resize_with_pad(img, size) for img in images]
    sent += [np.zeros((size, size, 3), np.uint8)] * (len(spec.images) - len(sent))
    state = np.asarray(state, dtype=np.float64)
    parts = [state[:-1], state[-1:]] if layout == "droid" else [state]
    if layout == "aloha":
        sent = [np.ascontiguousarray(img.transpose(2, 0, 1)) for img in sent]  # CHW, as openpi's ALOHA client
    message: dict[str, Any] = {"prompt": prompt}
    for path, value in [*zip(spec.images, sent), *zip(spec.state, parts)]:
        target = message
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return message
