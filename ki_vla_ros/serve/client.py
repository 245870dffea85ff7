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

Requests use the ki_vla layout (serve/layouts.py): "images" (list by model slot, None =
missing camera), "state", "prompt", and for real-time chunking "previous_actions" and
"inference_delay_steps". The token, if the server wants one, comes from the environment
variable KI_VLA_SERVE_TOKEN (never from a config file).
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
from ki_vla_ros.serve.protocol import ProtocolError, pack, unpack

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 5.0
TOKEN_ENV = "KI_VLA_SERVE_TOKEN"
_SIZES = {"num_cameras": "num_cameras", "state_dim": "state_dim", "action_dim": "action_dim",
          "horizon": "action_horizon"}


class RemotePredictor:
    """Predictor protocol over the wire; thread-safe (one request at a time)."""

    def __init__(self, uri: str, *, timeout_s: float = 2.0, token: str | None = None):
        if not uri.startswith(("ws://", "wss://")):
            raise ValueError(f"model.remote is {uri!r}; expected ws://host:port or wss://host:port")
        self.uri = uri
        self.timeout_s = timeout_s
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.device = f"remote {uri}"
        self.reconnects = 0
        self._ws = None
        self._lock = threading.Lock()
        self._backoff_s = BACKOFF_INITIAL_S
        self._next_attempt_s = 0.0
        self._last_failure = ""
        with self._lock:
            self.metadata = self._open()  # fails loudly at start-up: sizes are needed to check the robot
        missing = [key for key in _SIZES.values() if not isinstance(self.metadata.get(key), int)]
        if missing:
            raise PolicyError(f"policy server {uri} metadata has no {missing}; expected a `ki-vla serve` server "
                              f"(got keys {sorted(self.metadata)})")
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
        message: dict[str, Any] = {"images": [None if img is None else np.ascontiguousarray(img) for img in images],
                                   "state": np.asarray(state, dtype=np.float64), "prompt": prompt}
        if noise is not None:
            message["noise"] = np.asarray(noise, dtype=np.float32)
        if previous_actions is not None:
            message["previous_actions"] = np.asarray(previous_actions, dtype=np.float32)
            message["inference_delay_steps"] = int(inference_delay_steps)
        reply = self._request(message)
        actions = reply.get("actions")
        expected = (self.horizon, self.action_dim)
        if not isinstance(actions, np.ndarray) or actions.shape != expected or actions.dtype.kind != "f":
            shown = f"{actions.dtype} {list(actions.shape)}" if isinstance(actions, np.ndarray) else repr(actions)[:60]
            with self._lock:
                self._fail(f"malformed reply: 'actions' is {shown}; expected float {list(expected)}")
        self.last_server_timing = reply.get("server_timing", {})
        return actions.astype(np.float32)

    def generate_subtask(self, images: Sequence[np.ndarray | None], task: str, max_new_tokens: int = 24) -> str:
        raise PolicyError(f"the planner needs the model in-process; {self.uri} serves action chunks only")

    def warmup(self) -> None:
        """One blank request (the server warmed its model at start-up; this checks the path)."""
        images = [np.zeros((32, 32, 3), np.uint8)] * self.num_cameras
        self.predict_chunk(images, np.zeros(self.state_dim), "warm up")
