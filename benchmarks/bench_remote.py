"""Remote inference over `ki-vla serve` on loopback against the model in this process.

    python benchmarks/bench_remote.py [--checkpoint demo] [--requests 40] [--clients 1 4 8] [--json out.json]

1. Added latency: one client, 2 cameras at 224x224 uint8 + state + prompt. In-process:
   Predictor.predict_chunk; remote: RemotePredictor.predict_chunk (pack, websocket, unpack,
   server parse, the same predict_chunk, reply). Printed: p50 / p99 of both, the server's own
   model time (server_timing.infer_ms) and the difference remote - in-process.
2. Several robots: N clients (threads, one connection each) send requests back to back, the
   server batching them (--max-batch 8, --batch-wait-ms 5) and, as the baseline in the same
   run, a server that runs one request at a time (--max-batch 1). Printed per N: requests/s,
   per-request latency p50 / p99, mean batch size.

The server is a separate process (`ki-vla serve --port 0`) pinned by the OS like the client,
so on a small machine both compete for the cores; the numbers include that.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.model.inference import Predictor
from ki_vla_ros.runtime.model_loading import DEMO, DEMO_CHECKPOINT_DIR
from ki_vla_ros.serve.client import RemotePredictor

REPO_ROOT = Path(__file__).resolve().parents[1]


def start_server(checkpoint: str, *extra: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    process = subprocess.Popen([sys.executable, "-m", "ki_vla_ros.cli", "serve", "--checkpoint", checkpoint,
                                "--port", "0", "--torch-threads", "1", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in process.stdout:
        match = re.search(r"serving on (ws://\S+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # drain logs
            return process, match.group(1)
    raise RuntimeError(f"ki-vla serve exited with {process.wait()}")


def observation(predictor, seed: int):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(2)]
    images += [None] * (predictor.num_cameras - 2)
    return images, rng.uniform(-0.5, 0.5, predictor.state_dim), "move to the red block"


def percentiles(values_ms) -> dict[str, float]:
    v = np.asarray(values_ms)
    return {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))}


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def clients_run(uri: str, predictor, n_clients: int, requests: int) -> dict:
    remotes = [RemotePredictor(uri, timeout_s=60.0) for _ in range(n_clients)]
    latencies: list[list[float]] = [[] for _ in range(n_clients)]
    batches: list[list[int]] = [[] for _ in range(n_clients)]

    def run(c: int) -> None:
        obs = observation(predictor, c)
        for _ in range(requests):
            t0 = time.perf_counter()
            remotes[c].predict_chunk(*obs)
            latencies[c].append((time.perf_counter() - t0) * 1e3)
            batches[c].append(remotes[c].last_server_timing.get("batch_size", 1))

    threads = [threading.Thread(target=run, args=(c,)) for c in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s = time.perf_counter() - t0
    for r in remotes:
        r.close()
    flat = [x for per in latencies for x in per]
    return {"clients": n_clients, "requests_per_s": n_clients * requests / wall_s, **percentiles(flat),
            "mean_batch": float(np.mean([b for per in batches for b in per]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=DEMO)
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement (per client)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = DEMO_CHECKPOINT_DIR if args.checkpoint == DEMO else Path(args.checkpoint)
    local = Predictor.from_pretrained(str(path), device="cpu")
    local.warmup()
    images, state, prompt = observation(local, 0)
    result: dict = {"checkpoint": str(path), "cameras": 2, "image_px": 224}

    server, uri = start_server(args.checkpoint)
    try:
        remote = RemotePredictor(uri, timeout_s=60.0)
        for _ in range(3):
            remote.predict_chunk(images, state, prompt)
        local_ms = timed(lambda i: local.predict_chunk(images, state, prompt), args.requests)
        server_ms: list[float] = []

        def remote_call(i: int) -> None:
            remote.predict_chunk(images, state, prompt)
            server_ms.append(remote.last_server_timing["infer_ms"])

        remote_ms = timed(remote_call, args.requests)
        remote.close()
        added = {k: percentiles(remote_ms)[k] - percentiles(local_ms)[k] for k in ("p50_ms", "p99_ms")}
        result["latency"] = {"in_process": percentiles(local_ms), "remote": percentiles(remote_ms),
                             "server_model": percentiles(server_ms), "added": added}
        print(f"one client, 2 cameras 224x224 uint8, {args.requests} requests ({path.name})")
        print(f"{'':>22} {'p50 ms':>8} {'p99 ms':>8}")
        for name, key in (("in-process", "in_process"), ("remote (loopback)", "remote"),
                          ("server model time", "server_model"), ("added by remote", "added")):
            row = result["latency"][key]
            print(f"{name:>22} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}")
        result["batched"] = [clients_run(uri, local, n, args.requests) for n in args.clients]
    finally:
        server.kill()
        server.wait()
    server, uri = start_server(args.checkpoint, "--max-batch", "1")
    try:
        result["unbatched"] = [clients_run(uri, local, n, args.requests) for n in args.clients]
    finally:
        server.kill()
        server.wait()
    print(f"\n{'clients':>7} {'server':>10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} {'x req/s':>8}")
    for batched, single in zip(result["batched"], result["unbatched"]):
        for name, row in (("max-batch 1", single), ("batched", batched)):
            ratio = row["requests_per_s"] / single["requests_per_s"]
            print(f"{row['clients']:>7} {name:>10} {row['requests_per_s']:>8.1f} {row['p50_ms']:>8.1f} "
                  f"{row['p99_ms']:>8.1f} {row['mean_batch']:>10.2f} {ratio:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
