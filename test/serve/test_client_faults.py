"""RemotePredictor against servers that misbehave (real websocket servers on loopback, scripted):
every failure is a PolicyError naming the server and the reason, never a chunk, and reconnects
wait a doubling backoff."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from config_files import config_file
from websockets.sync.server import serve

from ki_vla_ros.runtime.config import ConfigError, load_robot_config
from ki_vla_ros.runtime.policy import PolicyError
from ki_vla_ros.serve import client as client_module
from ki_vla_ros.serve.client import RemotePredictor
from ki_vla_ros.serve.protocol import pack

METADATA = {"action_horizon": 10, "action_dim": 8, "state_dim": 8, "num_cameras": 2}
IMAGES = [np.zeros((32, 32, 3), np.uint8)] * 2


class ScriptedServer:
    """A websocket server that sends `metadata`, then answers each request with reply(request)
    (None: never answers)."""

    def __init__(self, reply, metadata=METADATA):
        def handler(ws):
            ws.send(pack(metadata))
            for message in ws:
                answer = reply(message)
                if answer is not None:
                    ws.send(answer)

        self.server = serve(handler, "127.0.0.1", 0)
        self.uri = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_a_reply_of_the_wrong_shape_is_a_policy_error_and_the_client_reconnects():
    server = ScriptedServer(lambda m: pack({"actions": np.zeros((3, 8), np.float32)}))
    try:
        remote = RemotePredictor(server.uri, timeout_s=2.0)
        with pytest.raises(PolicyError, match=r"malformed reply: 'actions' is float32 \[3, 8\]; expected float "
                                              r"\[10, 8\]; next connection attempt in 0.5 s"):
            remote.predict_chunk(IMAGES, np.zeros(8), "task")
        with pytest.raises(PolicyError, match="next connection attempt in 0.[0-5] s"):  # within the backoff
            remote.predict_chunk(IMAGES, np.zeros(8), "task")
        time.sleep(0.6)
        with pytest.raises(PolicyError, match="malformed reply"):  # reconnected, same bad server
            remote.predict_chunk(IMAGES, np.zeros(8), "task")
        assert remote.reconnects == 1
    finally:
        server.close()


def test_a_silent_server_times_out_and_garbage_is_named():
    server = ScriptedServer(lambda m: None)
    garbage = ScriptedServer(lambda m: b"\xc1")
    try:
        remote = RemotePredictor(server.uri, timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(PolicyError, match=f"policy server {server.uri}: no reply within 0.3 s"):
            remote.predict_chunk(IMAGES, np.zeros(8), "task")
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(PolicyError, match="malformed reply: message is not valid msgpack"):
            RemotePredictor(garbage.uri).predict_chunk(IMAGES, np.zeros(8), "task")
    finally:
        server.close()
        garbage.close()


def test_no_server_or_a_server_without_sizes_fails_at_start_naming_it(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(PolicyError, match=f"policy server ws://127.0.0.1:{port}: cannot connect"):
        RemotePredictor(f"ws://127.0.0.1:{port}", timeout_s=1.0)
    openpi_like = ScriptedServer(lambda m: None, metadata={})
    try:
        with pytest.raises(PolicyError, match=r"metadata has no \['num_cameras', 'state_dim', 'action_dim', "
                                              r"'action_horizon'\]"):
            RemotePredictor(openpi_like.uri)
    finally:
        openpi_like.close()


def test_backoff_doubles_up_to_the_cap():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ScriptedServer(lambda m: None)
    remote = RemotePredictor(server.uri, timeout_s=0.2)
    server.close()
    remote.uri = f"ws://127.0.0.1:{port}"  # the server moved away: every attempt is refused
    waits = []
    for _ in range(6):
        remote._next_attempt_s = 0.0  # skip the wait itself; the test reads the schedule
        with pytest.raises(PolicyError) as error:
            remote.predict_chunk(IMAGES, np.zeros(8), "task")
        waits.append(float(str(error.value).rsplit("in ", 1)[1].split(" s")[0]))
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert waits[-1] == client_module.BACKOFF_MAX_S


def test_model_remote_must_be_a_websocket_url(tmp_path):
    path = config_file(tmp_path, "single_arm", lambda document: document["policy_node"]["ros__parameters"]
                       ["model"].update(remote="http://gpu:8000"))
    with pytest.raises(ConfigError, match=r"model\.remote = 'http://gpu:8000': ws://host:port"):
        load_robot_config(path)


def test_openpi_layout_extra_action_dims_are_an_error_unless_the_config_says_drop():
    """An openpi-like server ({} metadata) answering [10, 32] (openpi pads actions to 32)."""
    padded = np.arange(10 * 32, dtype=np.float32).reshape(10, 32)
    server = ScriptedServer(lambda m: pack({"actions": padded, "server_timing": {"infer_ms": 1.0}}), metadata={})
    try:
        with pytest.raises(PolicyError, match=r"'actions' is float32 \[10, 32\]; expected float \[10, 8\] \(robot "
                                              r"action_dim; set model.remote_extra_action_dims: drop"):
            RemotePredictor(server.uri, layout="libero", state_dim=8, action_dim=8)
        remote = RemotePredictor(server.uri, layout="libero", state_dim=8, action_dim=8, extra_action_dims="drop")
        assert remote.horizon == 10
        np.testing.assert_array_equal(remote.predict_chunk(IMAGES, np.zeros(8), "task"), padded[:, :8])
    finally:
        server.close()


def test_openpi_layout_a_reply_whose_horizon_changes_or_has_too_few_dims_is_a_policy_error():
    rows = iter([10, 7, 10])
    dims = iter([8, 8, 6])
    server = ScriptedServer(lambda m: pack({"actions": np.zeros((next(rows), next(dims)), np.float64)}), metadata={})
    try:
        remote = RemotePredictor(server.uri, layout="droid", state_dim=8, action_dim=8)
        assert remote.horizon == 10
        with pytest.raises(PolicyError, match=r"'actions' is float64 \[7, 8\]; expected float \[10, 8\]"):
            remote.predict_chunk(IMAGES, np.zeros(8), "task")
        time.sleep(0.6)  # the backoff after a malformed reply
        with pytest.raises(PolicyError, match=r"'actions' is float64 \[10, 6\]; expected float \[10, 8\]"):
            remote.predict_chunk(IMAGES, np.zeros(8), "task")
    finally:
        server.close()


@pytest.mark.parametrize("config_name, change, error", [
    ("single_arm", {"remote_layout": "openpi"}, r"model\.remote_layout = 'openpi'"),
    ("bimanual", {"remote_layout": "libero"},
     r"model\.remote_layout = 'libero': a layout with 3 image slots .*; libero has 2"),
    ("single_arm", {"remote_layout": "droid", "chunk_mode": "rtc"},
     r"chunk\.mode = 'rtc': blend: model\.remote_layout droid talks to an openpi server"),
    ("single_arm", {"remote_extra_action_dims": "slice"}, r"model\.remote_extra_action_dims = 'slice'"),
])
def test_a_wrong_remote_layout_setting_is_a_config_error_naming_it(tmp_path, config_name, change, error):
    def apply(document):
        policy, model = document["policy_node"]["ros__parameters"], dict(change)
        if "chunk_mode" in model:
            policy["chunk"]["mode"] = model.pop("chunk_mode")
        policy["model"].update(model)

    path = config_file(tmp_path, config_name, apply)
    with pytest.raises(ConfigError, match=error):
        load_robot_config(path)
