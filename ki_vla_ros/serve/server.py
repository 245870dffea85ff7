"""`ki-vla serve`: a websocket policy server speaking openpi's protocol (protocol.py), ROS-free.

    client connects        <- metadata (model sizes, layouts, limits)
    observation dict   ->  parse_request (layouts.py)  ->  Batcher  ->  one forward pass
                       <-  {"actions": [H, action_dim] float32, "server_timing": {...}}

Safe by default: binds 127.0.0.1; with a token every connection must send
"Authorization: Api-Key <token>" (HTTP 401 otherwise); messages above max_message_bytes are
refused by the websocket layer (the connection is closed with code 1009 and a reason that
states the limit); a malformed or wrong-shaped request gets a text-frame error naming the
field and the connection stays open; other clients never notice. GET /healthz answers 200.

Batching: requests from concurrent clients are run as one batch (Predictor.predict_chunks).
The batcher takes what is queued, and while fewer requests are queued than clients are
connected (and fewer than max_batch) it waits at most batch_wait_ms for the rest: a single
client never waits. Real-time-chunking requests (with previous_actions) run one at a time,
since each carries its own guidance.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import http
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve

from ki_vla_ros.serve.layouts import LAYOUTS, ChunkRequest, RequestError, parse_request
from ki_vla_ros.serve.protocol import ProtocolError, pack, unpack

log = logging.getLogger("ki_vla_ros.serve")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # 2 cameras at 640x480 uint8 are 1.8 MB


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (printed when ready)
    token: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    openpi_metadata: bool = False  # send only what an openpi server sends: {} on connect, actions + server_timing


@dataclass
class _Pending:
    request: ChunkRequest
    future: asyncio.Future
    queued_s: float


class Batcher:
    """Collects requests and runs them through the predictor, a batch at a time, in one thread."""

    def __init__(self, predictor, max_batch: int, batch_wait_s: float):
        self.predictor = predictor
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.connected = 0  # clients that may send; the batcher waits for at most this many
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def submit(self, request: ChunkRequest) -> tuple[np.ndarray, dict[str, float]]:
        pending = _Pending(request, asyncio.get_running_loop().create_future(), time.monotonic())
        await self._queue.put(pending)
        return await pending.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.batch_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if len(batch) >= self.connected or remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            guided = [p for p in batch if p.request.previous_actions is not None]
            plain = [p for p in batch if p.request.previous_actions is None]
            groups = [plain] if plain else []
            groups += [[p] for p in guided]
            for group in groups:
                await self._run_group(loop, group)

    async def _run_group(self, loop, group: list[_Pending]) -> None:
        started = time.monotonic()
        try:
            chunks = await loop.run_in_executor(self._executor, self._predict, [p.request for p in group])
        except Exception as error:  # the model failed: every waiting client hears why
            for p in group:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        infer_ms = (time.monotonic() - started) * 1e3
        for p, chunk in zip(group, chunks):
            if not p.future.done():
                p.future.set_result((chunk, {"infer_ms": infer_ms, "queue_ms": (started - p.queued_s) * 1e3,
                                             "batch_size": len(group)}))

    def _predict(self, requests: list[ChunkRequest]) -> list[np.ndarray]:
        if len(requests) == 1:
            r = requests[0]
            if r.previous_actions is not None:
                return [self.predictor.predict_chunk(r.images, r.state, r.prompt, noise=r.noise,
                                                     previous_actions=r.previous_actions,
                                                     inference_delay_steps=r.inference_delay_steps)]
            return [self.predictor.predict_chunk(r.images, r.state, r.prompt, noise=r.noise)]
        return self.predictor.predict_chunks([(r.images, r.state, r.prompt) for r in requests],
                                             noise=[r.noise for r in requests])


def server_metadata(predictor, config: ServerConfig) -> dict[str, Any]:
    """What a client learns on connect (openpi: arbitrary dict; ours states sizes and limits).
    With config.openpi_metadata: {} (what openpi's served checkpoints send), no sizes."""
    if config.openpi_metadata:
        return {}
    return {
        "server": "ki_vla_ros",
        "protocol": "openpi-websocket-msgpack",
        "action_horizon": int(predictor.horizon),
        "action_dim": int(predictor.action_dim),
        "state_dim": int(predictor.state_dim),
        "num_cameras": int(predictor.num_cameras),
        "noise_dim": int(predictor.config.action_dim),
        "image_size": int(predictor.config.image_size),
        "layouts": ["ki_vla", *LAYOUTS],
        "real_time_chunking": True,
        "max_message_bytes": int(config.max_message_bytes),
        "max_batch": int(config.max_batch),
    }


class PolicyServer:
    def __init__(self, predictor, config: ServerConfig = ServerConfig()):
        if config.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes is {config.max_message_bytes}; expected at least 1024")
        if config.max_batch < 1:
            raise ValueError(f"max_batch is {config.max_batch}; expected at least 1")
        self.predictor = predictor
        self.config = config
        self.metadata = server_metadata(predictor, config)
        self.batcher: Batcher | None = None
        self.port: int | None = None

    def serve_forever(self, on_ready=None) -> None:
        asyncio.run(self.run(on_ready))

    async def run(self, on_ready=None) -> None:
        c = self.config
        self.batcher = Batcher(self.predictor, c.max_batch, c.batch_wait_ms / 1e3)
        batching = asyncio.create_task(self.batcher.run())
        # max_queue: a client waits for each reply, so a few buffered frames are plenty (each up to max_size).
        async with serve(self._handle, c.host, c.port, compression=None, max_size=c.max_message_bytes,
                         max_queue=4, process_request=self._check_request) as server:
            self.port = server.sockets[0].getsockname()[1]
            if on_ready is not None:
                on_ready(self)
            try:
                await server.serve_forever()
            finally:
                batching.cancel()

    def _check_request(self, connection: ServerConnection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.config.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.config.token}".encode()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong token; expected header 'Authorization: Api-Key <token>'\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        p = self.predictor
        self.batcher.connected += 1
        log.info("client %s connected", ws.remote_address)
        try:
            await ws.send(pack(self.metadata))
            previous_total_ms: float | None = None
            async for message in ws:
                started = time.monotonic()
                try:
                    request = parse_request(unpack(message), num_cameras=p.num_cameras, state_dim=p.state_dim,
                                            action_dim=p.action_dim, horizon=p.horizon,
                                            noise_dim=p.config.action_dim)
                except (ProtocolError, RequestError) as error:
                    await ws.send(f"bad request: {error}")  # a text frame: openpi clients raise it
                    continue
                except Exception as error:  # a shape no check foresaw: still the request's fault
                    await ws.send(f"bad request: {type(error).__name__}: {error}")
                    continue
                try:
                    actions, timing = await self.batcher.submit(request)
                except Exception as error:  # e.g. a prompt too long for the model
                    await ws.send(f"inference failed: {error}")
                    continue
                if self.config.openpi_metadata:  # openpi's server reports infer_ms and prev_total_ms only
                    timing = {"infer_ms": timing["infer_ms"]}
                if previous_total_ms is not None:
                    timing["prev_total_ms"] = previous_total_ms
                reply = {"actions": np.asarray(actions, dtype=np.float32), "server_timing": timing}
                if not self.config.openpi_metadata:
                    reply["layout"] = request.layout
                await ws.send(pack(reply))
                previous_total_ms = (time.monotonic() - started) * 1e3
        except websockets.ConnectionClosed as closed:
            log.info("client %s closed: %s", ws.remote_address, closed)
        finally:
            self.batcher.connected -= 1
