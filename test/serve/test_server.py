"""`ki-vla serve` as a real process on loopback: openpi's protocol (metadata on connect, observation
dict in, actions + server timing out), openpi's example layouts, a token, and bad requests that
get an error naming the field while the server keeps serving."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import websockets
from websockets.sync.client import connect

from ki_vla_ros.runtime.model_loading import DEMO_CHECKPOINT_DIR
from ki_vla_ros.model.inference import Predictor
from ki_vla_ros.serve.client import RemotePredictor
from ki_vla_ros.runtime.policy import PolicyError
from ki_vla_ros.serve.protocol import pack, unpack

from server_process import ServerProcess

TOKEN = "test-token"
MAX_BYTES = 1_000_000


@pytest.fixture(scope="module")
def server():
    process = ServerProcess("--checkpoint", "demo", "--token", TOKEN, "--max-message-bytes", str(MAX_BYTES),
                            "--batch-wait-ms", "300")
    yield process
    process.stop()


def client(server, token=TOKEN):
    headers = {"Authorization": f"Api-Key {token}"} if token else None
    ws = connect(server.uri, additional_headers=headers, compression=None, max_size=None, legacy=True)
    return ws, unpack(ws.recv(timeout=10))


def ask(ws, observation):
    ws.send(pack(observation))
    reply = ws.recv(timeout=30)
    return reply if isinstance(reply, str) else unpack(reply)


def libero(state_dim=8, size=224):
    rng = np.random.default_rng(0)
    return {"observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation/state": np.linspace(-0.5, 0.5, state_dim), "prompt": "move to the red block"}


def test_metadata_on_connect_then_a_libero_observation_gives_actions_and_server_timing(server):
    ws, metadata = client(server)
    assert metadata["action_horizon"] == 10 and metadata["action_dim"] == 8 and metadata["num_cameras"] == 2
    noise = np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32)
    reply = ask(ws, libero() | {"noise": noise})
    assert reply["actions"].shape == (10, 8) and reply["actions"].dtype == np.float32
    assert reply["server_timing"]["infer_ms"] > 0 and reply["layout"] == "libero"
    # The same chunk as the model in this process (robot units).
    local = Predictor.from_pretrained(str(DEMO_CHECKPOINT_DIR), device="cpu")
    obs = libero()
    expected = local.predict_chunk([obs["observation/image"], obs["observation/wrist_image"]],
                                   obs["observation/state"], obs["prompt"], noise=noise)
    np.testing.assert_allclose(reply["actions"], expected, atol=1e-5)
    ws.close()


def test_droid_and_aloha_layouts_are_mapped_or_refused_by_field(server):
    ws, _ = client(server)
    image = np.zeros((180, 320, 3), np.uint8)
    droid = {"observation/exterior_image_1_left": image, "observation/wrist_image_left": image,
             "observation/joint_position": np.zeros(7), "observation/gripper_position": np.zeros(1),
             "prompt": "move to the blue block"}
    assert ask(ws, droid)["actions"].shape == (10, 8)
    chw = np.zeros((3, 224, 224), np.uint8)  # openpi's ALOHA client sends CHW
    aloha = {"images": {"cam_high": chw, "cam_left_wrist": chw, "cam_right_wrist": chw}, "state": np.zeros(14),
             "prompt": "x"}
    assert ask(ws, aloha) == ("bad request: field 'images.cam_right_wrist' has no model slot: the aloha layout "
                              "gives 3 images, the model has 2 camera slot(s)")
    ws.close()


@pytest.mark.parametrize("change, error", [
    (lambda o: o | {"observation/state": np.zeros(9)}, "field 'observation/state' has 9 values; the model's state has 8"),
    (lambda o: o | {"observation/image": np.zeros((224, 224), np.uint8)},
     "field 'observation/image' is uint8 of shape [224, 224]; expected an HxWx3 uint8 array"),
    (lambda o: o | {"observation/wrist_image": np.zeros((8, 8, 3), np.float32)},
     "field 'observation/wrist_image' is float32 of shape [8, 8, 3]"),
    (lambda o: o | {"prompt": 3}, "field 'prompt' is 3; expected a non-empty task string"),
    (lambda o: {k: v for k, v in o.items() if k != "prompt"}, "field 'prompt' is missing"),
    (lambda o: o | {"observation/state": np.array([np.nan] * 8)}, "field 'observation/state' is"),
    (lambda o: {"joints": [1, 2]}, "match no known layout"),
    (lambda o: o | {"previous_actions": np.zeros((11, 8))},
     "field 'previous_actions' has shape [11, 8]; expected [K, 8] with 1 <= K <= 10"),
])
def test_a_wrong_request_gets_an_error_naming_the_field_and_the_connection_keeps_serving(server, change, error):
    ws, _ = client(server)
    reply = ask(ws, change(libero()))
    assert isinstance(reply, str) and error in reply, reply
    assert ask(ws, libero())["actions"].shape == (10, 8)
    ws.close()


def test_garbage_and_text_frames_get_an_error_and_the_connection_keeps_serving(server):
    ws, _ = client(server)
    ws.send(b"\xc1\x00garbage")
    assert ws.recv(timeout=10).startswith("bad request: message is not valid msgpack")
    ws.send("a text frame")
    assert ws.recv(timeout=10) == "bad request: message is a str frame; expected a binary msgpack frame"
    assert ask(ws, libero())["actions"].shape == (10, 8)
    ws.close()


def test_an_oversized_request_closes_only_that_connection_with_code_1009(server):
    ok, _ = client(server)
    big, _ = client(server)
    big.send(pack(libero(size=600)))  # 2 x 1.08 MB > MAX_BYTES
    with pytest.raises(websockets.ConnectionClosedError) as closed:
        big.recv(timeout=10)
    assert closed.value.rcvd.code == 1009
    assert ask(ok, libero())["actions"].shape == (10, 8)
    ok.close()


def test_a_connection_without_the_token_is_refused_with_401(server):
    with pytest.raises(websockets.InvalidStatus, match="401"):
        client(server, token=None)
    with pytest.raises(websockets.InvalidStatus, match="401"):
        client(server, token="wrong")


def test_concurrent_clients_are_batched_into_one_forward_pass_with_the_same_actions(server):
    connections = [client(server)[0] for _ in range(4)]
    noises = [np.random.default_rng(10 + i).standard_normal((10, 8)).astype(np.float32) for i in range(4)]
    replies: list = [None] * 4

    def run(i):
        replies[i] = ask(connections[i], libero() | {"noise": noises[i]})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert max(r["server_timing"]["batch_size"] for r in replies) >= 2
    singles = [ask(connections[0], libero() | {"noise": n})["actions"] for n in noises]
    for reply, single in zip(replies, singles):
        np.testing.assert_allclose(reply["actions"], single, atol=1e-4)
    for ws in connections:
        ws.close()


def test_remote_predictor_acts_through_the_server_and_names_a_refused_request(server, monkeypatch):
    monkeypatch.setenv("KI_VLA_SERVE_TOKEN", TOKEN)
    remote = RemotePredictor(server.uri, timeout_s=10.0)
    obs = libero()
    images = [obs["observation/image"], obs["observation/wrist_image"]]
    chunk = remote.predict_chunk(images, obs["observation/state"], obs["prompt"])
    assert chunk.shape == (10, 8) and chunk.dtype == np.float32
    running = chunk[3:] + 0.01
    guided = remote.predict_chunk(images, obs["observation/state"], obs["prompt"], previous_actions=running,
                                  inference_delay_steps=2)
    np.testing.assert_allclose(guided[:2], running[:2], atol=1e-5)  # RTC over the wire: frozen steps
    with pytest.raises(PolicyError, match="refused the request: bad request: field 'state' has 3 values"):
        remote.predict_chunk(images, np.zeros(3), obs["prompt"])
    remote.close()
