"""benchmarks/gpu_check.py, the prepared device check, runs end to end at the tiny preset on the CPU
(so it cannot rot before a GPU session runs it), without OpenCV or ROS, and reports what it skipped."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_tiny_cpu_run_writes_the_table_json_without_opencv_or_ros(tmp_path):
    out = tmp_path / "gpu_check.json"
    # As on the device machine: the script from the repository root, OpenCV and rclpy absent.
    code = ("import sys; sys.modules['cv2'] = None; sys.modules['rclpy'] = None; "
            "sys.path.insert(0, 'benchmarks'); import gpu_check; "
            f"gpu_check.main(['--tiny', '--device', 'cpu', '--cameras', '1,2', '--paths', 'eager,graph,compiled+graph', "
            f"'--runs', '2', '--warmup', '1', '--train-batch', '2', '--out', {str(out)!r}])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per chunk: tiny (1 layer), float32, horizon 10, 10 steps" in proc.stdout
    result = json.loads(out.read_text())
    eager = {r["cameras"]: r for r in result["latency"] if r["path"] == "eager"}
    assert sorted(eager) == [1, 2]
    assert all(r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["speedup_vs_eager"] == 1.0 for r in eager.values())
    assert {r["path"] for r in result["latency"]} == {"eager"}  # graphs need CUDA: skipped, and said so
    assert any(s.startswith("graph: CUDA graphs need a CUDA device") for s in result["skipped"])
    assert any(s.startswith("compiled+graph: CUDA graphs need a CUDA device") for s in result["skipped"])
    assert any(s.startswith("max-autotune: not asked for") for s in result["skipped"])
    assert {(r["shape"], r["variant"]) for r in result["attention"] if "p50_ms" in r} >= {
        ("prefix", "gqa, any kernel"), ("expert", "repeated kv, any kernel")}
    opencv, on_device = result["preprocessing"]
    assert "error" in opencv and "cv2" in opencv["error"]  # no OpenCV here: the device path still ran
    assert on_device["where"] == "cpu, torch" and on_device["p50_ms"] > 0
    # A CPU model resizes with OpenCV: without it the row names what is missing (a GPU model does not need it).
    assert [(r["path"], r["cameras"]) for r in result["predictor"]] == [("predictor eager", 2)]
    assert "cv2" in result["predictor"][0]["error"]
    assert any(s.startswith("predictor graph: CUDA graphs need a CUDA device") for s in result["skipped"])
    # On the CPU the tiny model's own step is timed; on CUDA train_memory.one_ki_step (π0.5 size).
    step = result["training_step"]
    assert step["source"] == "plain step (gpu_check.py)" and step["note"] == ""
    assert step["step_ms"] > 0 and step["batch_size"] == 2
