"""Start `ki-vla serve` as a real process on loopback (any free port) and stop it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, *args: str, port: int = 0, ready_timeout_s: float = 60.0):
        env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ki_vla_ros.cli", "serve", "--port", str(port), "--torch-threads", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)
        deadline = time.monotonic() + ready_timeout_s
        self.output: list[str] = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = re.search(r"serving on ws://([\d.]+):(\d+)", line)
            if match:
                self.port = int(match.group(2))
                self.uri = f"ws://127.0.0.1:{self.port}"
                return
        self.stop()
        raise RuntimeError("ki-vla serve did not start:\n" + "".join(self.output))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process.stdout.close()
